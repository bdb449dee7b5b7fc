"""The synchronous client: httpx.Client I/O over the shared calls (_calls.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
from tci.client._errors import TCIClientError
from tci.client._sse import SSEDecoder
from tci.client._types import ExecuteResult, FileInfo, SessionInfo, StreamEvent, WrittenFile


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
        """The caller's live sessions."""
        return self._client._call(calls.list_sessions())

    def create(self) -> SessionInfo:
        """A new session, before any code runs (RateLimitError at TCI_MAX_SESSIONS)."""
        return self._client._call(calls.create_session())

    def interrupt(self, session_id: str) -> bool:
        """Ctrl-C for the session's running call, which then ends with a KeyboardInterrupt
        error output; the session and its state stay. False if no call was running."""
        return self._client._call(calls.interrupt(session_id))

    def delete(self, session_id: str) -> None:
        """End a session now (NotFoundError if unknown, SessionEndedError if already ended)."""
        return self._client._call(calls.delete_session(session_id))


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
        self.files = Files(client)

    @overload
    def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                files: FilesArg = ..., stream: Literal[False] = ...,
                timeout: Timeout | None = ...,
                execute_timeout: float | None = ...) -> ExecuteResult: ...

    @overload
    def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                files: FilesArg = ..., stream: Literal[True],
                timeout: Timeout | None = ...,
                execute_timeout: float | None = ...) -> ExecuteStream: ...

    def execute(
        self, *, code: str, language: str = "python", session_id: str | None = None,
        files: FilesArg = None, stream: bool = False, timeout: Timeout | None = None,
        execute_timeout: float | None = None,
    ) -> ExecuteResult | ExecuteStream:
        """Run ``code`` in a new session, or in ``session_id``'s. ``files`` (a list of
        {"name", "encoding", "content"} or a {name: str | bytes} mapping) are written to the
        working directory first. With ``stream=True`` returns an ExecuteStream; errors found
        before the code starts (bad key, unknown session, ...) are raised here.
        ``timeout`` is the HTTP request's; ``execute_timeout`` (seconds, at most the server's
        TCI_EXECUTE_TIMEOUT) is how long the server lets this call run before interrupting
        it: the call then answers with a TimeoutError output."""
        call = calls.execute(code, language, session_id, files, stream, timeout,
                             execute_timeout)
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
