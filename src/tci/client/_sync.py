"""The synchronous client: httpx.Client I/O over the shared calls (_calls.py)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from tci.client import _calls as calls
from tci.client._base import (
    DEFAULT_TIMEOUT,
    BaseClient,
    Call,
    Flow,
    RequestSpec,
    Resource,
    T,
    Timeout,
    mapped_errors,
    raise_for_status,
)
from tci.client._calls import FilesArg
from tci.client._errors import BadRequestError, RateLimitError, TCIClientError
from tci.client._runs import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_RETRIES,
    Chunk,
    ChunkReader,
    RunArg,
    RunPlan,
    Tally,
    located,
    plan,
    retry_delay,
)
from tci.client._sse import SSEDecoder
from tci.client._types import (
    ExecuteResult,
    FileInfo,
    PausedSession,
    ResumedSession,
    RunResult,
    SessionInfo,
    Snapshot,
    SnapshotInfo,
    StreamEvent,
    WrittenFile,
)


class Client(BaseClient):
    """Synchronous TCI client.

    ``Client(base_url=None, api_key=None, timeout=..., headers=None, transport=None)``:
    base_url defaults to $TCI_BASE_URL, then $TOGETHER_BASE_URL, then
    http://127.0.0.1:8000/v1; api_key to $TCI_API_KEY, then $TOGETHER_API_KEY.
    ``transport`` is handed to httpx.Client (any httpx.BaseTransport). Thread-safe.
    """

    def __init__(
        self, *, base_url: str | None = None, api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT, headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url=base_url, api_key=api_key, timeout=timeout, headers=headers)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                  transport=transport)
        self.code_interpreter = CodeInterpreter(self)
        self.runs = Runs(self)

    def _send(self, request: RequestSpec, *, stream: bool = False) -> httpx.Response:
        with mapped_errors():
            return self._http.send(request.build(self._http), stream=stream)

    def _call(self, call: Call[T]) -> T:
        return call.parse(self._send(call.request))

    def _run(self, flow: Flow[T]) -> T:
        outcome: Any = None
        try:
            while True:
                call = flow.send(outcome)
                try:
                    outcome = self._call(call)
                except TCIClientError as exc:
                    outcome = exc
        except StopIteration as done:
            result: T = done.value
            return result

    def _open_stream(self, request: RequestSpec) -> httpx.Response:
        response = self._send(request, stream=True)
        if not response.is_success:
            with mapped_errors(), contextlib.closing(response):
                response.read()
            raise_for_status(response)
        return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ExecuteStream:
    """The events of ``execute(..., stream=True)``: OutputEvents as the code produces them,
    then one ResultEvent. Iterate it; close it (or use ``with``) to stop early, which
    interrupts the cell on the server."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[StreamEvent]:
        decoder = SSEDecoder()
        try:
            with mapped_errors():
                for line in self._response.iter_lines():
                    yield from decoder.feed(line)
                    if decoder.finished:
                        return
            yield from decoder.end()
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> ExecuteStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sessions(Resource["Client"]):
    def list(self) -> list[SessionInfo]:
        """The caller's sessions, running and paused (``status``)."""
        return self._client._call(calls.list_sessions())

    def create(self) -> SessionInfo:
        """A new session, before any code runs (RateLimitError at TCI_MAX_SESSIONS)."""
        return self._client._call(calls.create_session())

    def interrupt(self, session_id: str) -> bool:
        """Ctrl-C for the session's running call, which then ends with a KeyboardInterrupt
        error output; the session and its state stay. False if no call was running."""
        return self._client._call(calls.interrupt(session_id))

    def delete(self, session_id: str) -> None:
        """End a session now (NotFoundError if unknown, SessionEndedError if already ended);
        a paused one's kept state is freed."""
        return self._client._call(calls.delete_session(session_id))

    def pause(self, session_id: str) -> PausedSession:
        """End the session's processes and keep its state (variables, functions, classes,
        imports, files, installed packages); ``skipped`` names what could not be kept. Any
        later call on its id resumes it. Pausing a paused session is no error; ConflictError
        while a call runs."""
        return self._client._call(calls.pause_session(session_id))

    def resume(self, session_id: str) -> ResumedSession:
        """Resume a paused session now, without running code (RateLimitError, with
        ``retry_after``, when the server runs its maximum of sessions)."""
        return self._client._call(calls.resume_session(session_id))

    def snapshot(self, session_id: str) -> Snapshot:
        """Keep the session's state under a new snapshot id while the session runs on;
        ``execute(..., snapshot_id=snapshot.id)`` starts new sessions from it (ConflictError
        while a call runs)."""
        return self._client._call(calls.snapshot_session(session_id))


class Snapshots(Resource["Client"]):
    def list(self) -> list[SnapshotInfo]:
        """The caller's snapshots, oldest first."""
        return self._client._call(calls.list_snapshots())

    def delete(self, snapshot_id: str) -> None:
        """Delete a snapshot and free its state (sessions started from it go on)."""
        return self._client._call(calls.delete_snapshot(snapshot_id))


class Files(Resource["Client"]):
    def list(self, session_id: str) -> list[FileInfo]:
        """Every regular file of the session's working directory."""
        return self._client._call(calls.list_files(session_id))

    def read(self, session_id: str, path: str) -> bytes:
        """One file's bytes (path relative to the working directory)."""
        return self._client._call(calls.read_file(session_id, path))

    def write(self, session_id: str, path: str, data: bytes | str) -> WrittenFile:
        """Write one file (str is encoded as UTF-8); directories are created as needed."""
        return self._client._call(calls.write_file(session_id, path, data))


class CodeInterpreter(Resource["Client"]):
    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.sessions = Sessions(client)
        self.snapshots = Snapshots(client)
        self.files = Files(client)

    @overload
    def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                files: FilesArg = ..., stream: Literal[False] = ...,
                timeout: Timeout | None = ..., execute_timeout: float | None = ...,
                snapshot_id: str | None = ...) -> ExecuteResult: ...

    @overload
    def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                files: FilesArg = ..., stream: Literal[True],
                timeout: Timeout | None = ..., execute_timeout: float | None = ...,
                snapshot_id: str | None = ...) -> ExecuteStream: ...

    def execute(
        self, *, code: str, language: str = "python", session_id: str | None = None,
        files: FilesArg = None, stream: bool = False, timeout: Timeout | None = None,
        execute_timeout: float | None = None, snapshot_id: str | None = None,
    ) -> ExecuteResult | ExecuteStream:
        """Run ``code`` in a new session, or in ``session_id``'s. ``files`` (a list of
        {"name", "encoding", "content"} or a {name: str | bytes} mapping) are written to the
        working directory first. With ``stream=True`` returns an ExecuteStream; errors found
        before the code starts (bad key, unknown session, ...) are raised here.
        ``timeout`` is the HTTP request's; ``execute_timeout`` (seconds, at most the server's
        TCI_EXECUTE_TIMEOUT) is how long the server lets this call run before interrupting
        it: the call then answers with a TimeoutError output. ``snapshot_id`` (instead of
        ``session_id``) runs the code in a new session started from that snapshot."""
        call = calls.execute(code, language, session_id, files, stream, timeout,
                             execute_timeout, snapshot_id)
        if stream:
            return ExecuteStream(self._client._open_stream(call.request))
        return self._client._call(call)

    def run_batch(
        self, snippets: list[str], concurrency: int = 8, timeout: Timeout | None = None, *,
        session_ids: list[str | None] | None = None, language: str = "python",
        return_exceptions: bool = True, execute_timeout: float | None = None,
    ) -> list[Any]:
        """Run many snippets at once, at most ``concurrency`` at a time, each in a new session
        (or in ``session_ids[i]`` when given), and return one outcome per snippet, in input
        order: its ExecuteResult, or the TCIClientError that took its place (APITimeoutError,
        SessionEndedError, ...). One failure loses nothing else. With
        ``return_exceptions=False`` the first failure in input order is raised instead, once
        all have finished and their sessions were ended.

        Runs on a thread pool of ``concurrency`` threads sharing this client. Sessions the
        batch created are ended (DELETE) as soon as their snippet finishes, failed or not
        (inside its slot, so at most ``concurrency`` of them are alive at once); one whose
        answer never came (the request timed out) is ended by the server, which knows its
        client left. Given sessions are left alive, with their state. ``timeout`` is each
        snippet's HTTP request timeout in seconds; ``execute_timeout`` the server's limit
        for each snippet (at most its TCI_EXECUTE_TIMEOUT), which makes a slow snippet an
        ExecuteResult with a TimeoutError output rather than an APITimeoutError.
        """
        flows = calls.batch_flows(snippets, concurrency, session_ids, language, timeout,
                                  execute_timeout)
        if not flows:
            return []
        with ThreadPoolExecutor(max_workers=min(concurrency, len(flows)),
                                thread_name_prefix="tci-batch") as pool:
            outcomes = list(pool.map(self._client._run, flows))
        return calls.batch_outcome(outcomes, return_exceptions)


class _Stopped(Exception):
    """The stream was closed while a request waited to be retried."""


class RunStream:
    """The results of ``client.runs.stream(...)``, each as its run finishes (or in input
    order with ``ordered=True``). Iterate it once; ``close()`` (or ``with``, or leaving the
    loop and dropping it) stops: requests not sent are never sent, and the ones in flight
    are cut, which makes the server stop their runs. ``results`` is what arrived so far.

    Each request is sent and read on a thread of its own (at most ``max_in_flight``); the
    iterating thread only takes their results from a queue."""

    def __init__(self, client: Client, plan: RunPlan) -> None:
        self._client = client
        self._plan = plan
        self._tally = Tally(plan.total, plan.ordered)
        self._events: queue.Queue[RunResult | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._reading: set[httpx.Response] = set()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def results(self) -> list[RunResult]:
        """Every result received so far, in input order."""
        return self._tally.results()

    def __iter__(self) -> Iterator[RunResult]:
        if self._pool is not None:
            raise RuntimeError("a RunStream can be iterated only once")
        self._pool = ThreadPoolExecutor(max_workers=self._plan.max_in_flight,
                                        thread_name_prefix="tci-runs")
        for chunk in self._plan.chunks:
            self._pool.submit(self._read_chunk, chunk)
        try:
            while not self._tally.done:
                event = self._events.get()
                if isinstance(event, BaseException):
                    raise self._tally.failure(event)
                yield from self._tally.add(event)
        finally:
            self.close()

    def _read_chunk(self, chunk: Chunk) -> None:
        if self._stop.is_set():
            return
        try:
            response = self._answer(chunk)
            try:
                reader = ChunkReader(chunk)
                with mapped_errors():
                    for line in response.iter_lines():
                        result = reader.feed(line)
                        if result is not None:
                            self._events.put(result)
                reader.end()
            finally:
                with self._lock:
                    self._reading.discard(response)
                response.close()
        except _Stopped:
            return
        except BaseException as exc:  # handed to the iterating thread, raised there
            if not self._stop.is_set():
                self._events.put(exc)

    def _answer(self, chunk: Chunk) -> httpx.Response:
        """The request's streaming answer, after retrying 429s as the plan allows."""
        attempt = 0
        while True:
            try:
                response = self._client._open_stream(chunk.request(self._plan.timeout))
            except RateLimitError as exc:
                delay = retry_delay(exc, attempt, self._plan.max_retries)
                if delay is None:
                    raise
                attempt += 1
                if self._stop.wait(delay):
                    raise _Stopped from None
                continue
            except BadRequestError as exc:
                raise located(exc, chunk) from None
            with self._lock:
                self._reading.add(response)
            if self._stop.is_set():  # closed while this request was being answered
                _cut(response)
            return response

    def close(self) -> None:
        """Stop: unsent requests are dropped, the answers being read are cut."""
        self._stop.set()
        with self._lock:
            responses = list(self._reading)
        for response in responses:
            _cut(response)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RunStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut(response: httpx.Response) -> None:
    """End an answer another thread is reading. Closing a socket does not wake a thread
    blocked reading it; shutting it down does (its read then fails at once)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    else:  # a transport that does not expose its socket
        response.close()


class Runs(Resource["Client"]):
    """One-shot runs (POST /v1/tci/batch): each program in a fresh sandbox of its own, as
    a script fed its stdin, judged with a verdict. Runs are Run objects or plain dicts of the
    wire's fields. Large inputs are split into requests of at most ``chunk_size`` runs (the
    server refuses more than its TCI_BATCH_MAX_RUNS, 1000 by default), ``max_in_flight`` of
    them at once; a request refused with 429 (the server's run queue is full, before any of
    its runs started) is retried after the server's Retry-After, up to ``max_retries`` times,
    then RateLimitError is raised. A 400/413/422 is BadRequestError naming the run by its
    input index. A connection lost before every result came raises RunsIncompleteError,
    holding every result that did come (``.results``) and the indexes that did not
    (``.missing``). ``timeout`` is each request's httpx timeout (default: no read timeout,
    as the server writes nothing while runs wait or run)."""

    def stream(
        self, runs: Iterable[RunArg], *, ordered: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_retries: int = DEFAULT_MAX_RETRIES, timeout: Timeout | None = None,
    ) -> RunStream:
        """A RunStream of one RunResult per run, each as soon as it finished
        (``ordered=True``: in input order, each as soon as those before it are out)."""
        return RunStream(self._client, plan(
            runs, ordered=ordered, chunk_size=chunk_size, max_in_flight=max_in_flight,
            max_retries=max_retries, timeout=timeout))

    def batch(
        self, runs: Iterable[RunArg], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: Timeout | None = None,
    ) -> list[RunResult]:
        """One RunResult per run, in input order, once all have finished."""
        with self.stream(runs, ordered=True, chunk_size=chunk_size,
                         max_in_flight=max_in_flight, max_retries=max_retries,
                         timeout=timeout) as results:
            return list(results)
