"""The synchronous client: httpx.Client I/O over the shared BaseClient logic."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from tci.client._base import (
    DEFAULT_TIMEOUT,
    BaseClient,
    FilesArg,
    RequestSpec,
    SSEDecoder,
    Timeout,
    batch_outcome,
    check_batch,
    connection_error,
)
from tci.client._errors import APIConnectionError, TCIClientError
from tci.client._types import (
    ExecuteResult,
    FileInfo,
    ResultEvent,
    SessionInfo,
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

    def _send(self, spec: RequestSpec) -> httpx.Response:
        try:
            return self._http.request(spec.method, spec.path, **spec.kwargs())
        except httpx.HTTPError as exc:
            raise connection_error(exc) from exc

    def _open_stream(self, spec: RequestSpec) -> httpx.Response:
        request = self._http.build_request(spec.method, spec.path, **spec.kwargs())
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise connection_error(exc) from exc
        if not response.is_success:
            try:
                response.read()
            except httpx.HTTPError as exc:
                raise connection_error(exc) from exc
            finally:
                response.close()
            self._raise_for_status(response)
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
            for line in self._response.iter_lines():
                event = decoder.feed(line)
                if event is not None:
                    yield event
                    if isinstance(event, ResultEvent):
                        return
            event = decoder.flush()
            if event is not None:
                yield event
                if isinstance(event, ResultEvent):
                    return
        except httpx.HTTPError as exc:
            raise connection_error(exc) from exc
        finally:
            self.close()
        raise APIConnectionError("the stream ended before the result")

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> ExecuteStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sessions:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> list[SessionInfo]:
        """The caller's live sessions."""
        return self._client._parse_sessions(
            self._client._send(self._client._list_sessions_request()))

    def create(self) -> SessionInfo:
        """A new session, before any code runs (RateLimitError at TCI_MAX_SESSIONS)."""
        return self._client._parse_session(
            self._client._send(self._client._create_session_request()))

    def interrupt(self, session_id: str) -> bool:
        """Ctrl-C for the session's running call, which then ends with a KeyboardInterrupt
        error output; the session and its state stay. False if no call was running."""
        return self._client._parse_interrupted(
            self._client._send(self._client._interrupt_request(session_id)))

    def delete(self, session_id: str) -> None:
        """End a session now (NotFoundError if unknown, SessionEndedError if already ended)."""
        self._client._data(self._client._send(self._client._delete_session_request(session_id)))


class Files:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, session_id: str) -> list[FileInfo]:
        """Every regular file of the session's working directory."""
        return self._client._parse_files(
            self._client._send(self._client._list_files_request(session_id)))

    def read(self, session_id: str, path: str) -> bytes:
        """One file's bytes (path relative to the working directory)."""
        response = self._client._send(self._client._read_file_request(session_id, path))
        self._client._raise_for_status(response)
        return response.content

    def write(self, session_id: str, path: str, data: bytes | str) -> WrittenFile:
        """Write one file (str is encoded as UTF-8); directories are created as needed."""
        return self._client._parse_written(
            self._client._send(self._client._write_file_request(session_id, path, data)))


class CodeInterpreter:
    def __init__(self, client: Client) -> None:
        self._client = client
        self.sessions = Sessions(client)
        self.files = Files(client)

    @overload
    def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                files: FilesArg = ..., stream: Literal[False] = ...,
                timeout: Timeout | None = ...) -> ExecuteResult: ...

    @overload
    def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                files: FilesArg = ..., stream: Literal[True],
                timeout: Timeout | None = ...) -> ExecuteStream: ...

    def execute(
        self, *, code: str, language: str = "python", session_id: str | None = None,
        files: FilesArg = None, stream: bool = False, timeout: Timeout | None = None,
    ) -> ExecuteResult | ExecuteStream:
        """Run ``code`` in a new session, or in ``session_id``'s. ``files`` (a list of
        {"name", "encoding", "content"} or a {name: str | bytes} mapping) are written to the
        working directory first. With ``stream=True`` returns an ExecuteStream; errors found
        before the code starts (bad key, unknown session, ...) are raised here."""
        spec = self._client._execute_request(code, language, session_id, files, stream, timeout)
        if stream:
            return ExecuteStream(self._client._open_stream(spec))
        return self._client._parse_execute(self._client._send(spec))

    def run_batch(
        self, snippets: list[str], concurrency: int = 8, timeout: Timeout | None = None, *,
        session_ids: list[str | None] | None = None, language: str = "python",
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run many snippets at once, at most ``concurrency`` at a time, each in a new session
        (or in ``session_ids[i]`` when given), and return their ExecuteResults in input order.

        Runs on a thread pool of ``concurrency`` threads sharing this client. Sessions the
        batch created are ended as soon as their snippet finishes (inside its slot, so at
        most ``concurrency`` of them are alive at once); given sessions are left alive.
        ``timeout`` is each snippet's request timeout in seconds (the server's own
        TCI_EXECUTE_TIMEOUT still applies). If a snippet fails (APITimeoutError,
        SessionEndedError, ...), the first failure in input order is raised after all have
        finished, or with ``return_exceptions=True`` it takes that snippet's place. A snippet
        whose request timed out on the client leaves its session to the server's expiry,
        since its id was never received.
        """
        ids = check_batch(snippets, concurrency, session_ids)

        def run(index: int) -> ExecuteResult | TCIClientError:
            created: str | None = None
            try:
                result = self.execute(code=snippets[index], language=language,
                                      session_id=ids[index], timeout=timeout)
                if ids[index] is None:
                    created = result.session_id
                return result
            except TCIClientError as exc:
                return exc
            finally:
                if created is not None:
                    with contextlib.suppress(TCIClientError):
                        self.sessions.delete(created)

        if not snippets:
            return []
        with ThreadPoolExecutor(max_workers=min(concurrency, len(snippets)),
                                thread_name_prefix="tci-batch") as pool:
            outcomes = list(pool.map(run, range(len(snippets))))
        return batch_outcome(outcomes, return_exceptions)
