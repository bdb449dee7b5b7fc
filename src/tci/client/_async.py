"""The asynchronous client: httpx.AsyncClient I/O over the shared BaseClient logic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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


class AsyncClient(BaseClient):
    """Asynchronous TCI client; same configuration as Client, ``transport`` is handed to
    httpx.AsyncClient (any httpx.AsyncBaseTransport)."""

    def __init__(
        self, *, base_url: str | None = None, api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT, headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url=base_url, api_key=api_key, timeout=timeout, headers=headers)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers,
                                       timeout=timeout, transport=transport)
        self.code_interpreter = AsyncCodeInterpreter(self)

    async def _send(self, spec: RequestSpec) -> httpx.Response:
        try:
            return await self._http.request(spec.method, spec.path, **spec.kwargs())
        except httpx.HTTPError as exc:
            raise connection_error(exc) from exc

    async def _open_stream(self, spec: RequestSpec) -> httpx.Response:
        request = self._http.build_request(spec.method, spec.path, **spec.kwargs())
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise connection_error(exc) from exc
        if not response.is_success:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                raise connection_error(exc) from exc
            finally:
                await response.aclose()
            self._raise_for_status(response)
        return response

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class AsyncExecuteStream:
    """The events of ``await execute(..., stream=True)``: OutputEvents as produced, then one
    ResultEvent. ``async for`` over it; ``await close()`` (or ``async with``) stops early."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        decoder = SSEDecoder()
        try:
            async for line in self._response.aiter_lines():
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
            await self.close()
        raise APIConnectionError("the stream ended before the result")

    async def close(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> AsyncExecuteStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSessions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[SessionInfo]:
        """The caller's live sessions."""
        return self._client._parse_sessions(
            await self._client._send(self._client._list_sessions_request()))

    async def create(self) -> SessionInfo:
        """A new session, before any code runs (RateLimitError at TCI_MAX_SESSIONS)."""
        return self._client._parse_session(
            await self._client._send(self._client._create_session_request()))

    async def interrupt(self, session_id: str) -> bool:
        """Ctrl-C for the session's running call, which then ends with a KeyboardInterrupt
        error output; the session and its state stay. False if no call was running."""
        return self._client._parse_interrupted(
            await self._client._send(self._client._interrupt_request(session_id)))

    async def delete(self, session_id: str) -> None:
        """End a session now (NotFoundError if unknown, SessionEndedError if already ended)."""
        self._client._data(
            await self._client._send(self._client._delete_session_request(session_id)))


class AsyncFiles:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, session_id: str) -> list[FileInfo]:
        return self._client._parse_files(
            await self._client._send(self._client._list_files_request(session_id)))

    async def read(self, session_id: str, path: str) -> bytes:
        response = await self._client._send(self._client._read_file_request(session_id, path))
        self._client._raise_for_status(response)
        return response.content

    async def write(self, session_id: str, path: str, data: bytes | str) -> WrittenFile:
        return self._client._parse_written(
            await self._client._send(self._client._write_file_request(session_id, path, data)))


class AsyncCodeInterpreter:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.sessions = AsyncSessions(client)
        self.files = AsyncFiles(client)

    @overload
    async def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                      files: FilesArg = ..., stream: Literal[False] = ...,
                      timeout: Timeout | None = ...) -> ExecuteResult: ...

    @overload
    async def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                      files: FilesArg = ..., stream: Literal[True],
                      timeout: Timeout | None = ...) -> AsyncExecuteStream: ...

    async def execute(
        self, *, code: str, language: str = "python", session_id: str | None = None,
        files: FilesArg = None, stream: bool = False, timeout: Timeout | None = None,
    ) -> ExecuteResult | AsyncExecuteStream:
        """As Client.code_interpreter.execute; with ``stream=True``,
        ``async for event in await ci.execute(code=..., stream=True)``."""
        spec = self._client._execute_request(code, language, session_id, files, stream, timeout)
        if stream:
            return AsyncExecuteStream(await self._client._open_stream(spec))
        return self._client._parse_execute(await self._client._send(spec))

    async def run_batch(
        self, snippets: list[str], concurrency: int = 8, timeout: Timeout | None = None, *,
        session_ids: list[str | None] | None = None, language: str = "python",
        return_exceptions: bool = False,
    ) -> list[Any]:
        """As Client.code_interpreter.run_batch, on this event loop: one task per snippet,
        an asyncio.Semaphore(concurrency) bounding how many run (and hold a created
        session) at once."""
        ids = check_batch(snippets, concurrency, session_ids)
        slots = asyncio.Semaphore(concurrency)

        async def run(index: int) -> ExecuteResult | TCIClientError:
            async with slots:
                created: str | None = None
                try:
                    result = await self.execute(code=snippets[index], language=language,
                                                session_id=ids[index], timeout=timeout)
                    if ids[index] is None:
                        created = result.session_id
                    return result
                except TCIClientError as exc:
                    return exc
                finally:
                    if created is not None:
                        with contextlib.suppress(TCIClientError):
                            await self.sessions.delete(created)

        outcomes = await asyncio.gather(*(run(i) for i in range(len(snippets))))
        return batch_outcome(list(outcomes), return_exceptions)
