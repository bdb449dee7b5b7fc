"""The asynchronous client: httpx.AsyncClient I/O over the shared calls (_calls.py). Each
method does what its namesake in _sync.py does, awaited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
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
        self.runs = AsyncRuns(self)

    async def _send(self, request: RequestSpec, *, stream: bool = False) -> httpx.Response:
        with mapped_errors():
            return await self._http.send(request.build(self._http), stream=stream)

    async def _call(self, call: Call[T]) -> T:
        return call.parse(await self._send(call.request))

    async def _run(self, flow: Flow[T]) -> T:
        outcome: Any = None
        try:
            while True:
                call = flow.send(outcome)
                try:
                    outcome = await self._call(call)
                except TCIClientError as exc:
                    outcome = exc
        except StopIteration as done:
            result: T = done.value
            return result

    async def _open_stream(self, request: RequestSpec) -> httpx.Response:
        response = await self._send(request, stream=True)
        if not response.is_success:
            with mapped_errors():
                async with contextlib.aclosing(response):
                    await response.aread()
            raise_for_status(response)
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
            with mapped_errors():
                async for line in self._response.aiter_lines():
                    for event in decoder.feed(line):
                        yield event
                    if decoder.finished:
                        return
            for event in decoder.end():
                yield event
        finally:
            await self.close()

    async def close(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> AsyncExecuteStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSessions(Resource["AsyncClient"]):
    """Sessions' methods, awaited."""

    async def list(self) -> list[SessionInfo]:
        return await self._client._call(calls.list_sessions())

    async def create(self) -> SessionInfo:
        return await self._client._call(calls.create_session())

    async def interrupt(self, session_id: str) -> bool:
        return await self._client._call(calls.interrupt(session_id))

    async def delete(self, session_id: str) -> None:
        return await self._client._call(calls.delete_session(session_id))

    async def pause(self, session_id: str) -> PausedSession:
        return await self._client._call(calls.pause_session(session_id))

    async def resume(self, session_id: str) -> ResumedSession:
        return await self._client._call(calls.resume_session(session_id))

    async def snapshot(self, session_id: str) -> Snapshot:
        return await self._client._call(calls.snapshot_session(session_id))


class AsyncSnapshots(Resource["AsyncClient"]):
    """Snapshots' methods, awaited."""

    async def list(self) -> list[SnapshotInfo]:
        return await self._client._call(calls.list_snapshots())

    async def delete(self, snapshot_id: str) -> None:
        return await self._client._call(calls.delete_snapshot(snapshot_id))


class AsyncFiles(Resource["AsyncClient"]):
    """Files' methods, awaited."""

    async def list(self, session_id: str) -> list[FileInfo]:
        return await self._client._call(calls.list_files(session_id))

    async def read(self, session_id: str, path: str) -> bytes:
        return await self._client._call(calls.read_file(session_id, path))

    async def write(self, session_id: str, path: str, data: bytes | str) -> WrittenFile:
        return await self._client._call(calls.write_file(session_id, path, data))


class AsyncCodeInterpreter(Resource["AsyncClient"]):
    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self.sessions = AsyncSessions(client)
        self.snapshots = AsyncSnapshots(client)
        self.files = AsyncFiles(client)

    @overload
    async def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                      files: FilesArg = ..., stream: Literal[False] = ...,
                      timeout: Timeout | None = ..., execute_timeout: float | None = ...,
                      snapshot_id: str | None = ...) -> ExecuteResult: ...

    @overload
    async def execute(self, *, code: str, language: str = ..., session_id: str | None = ...,
                      files: FilesArg = ..., stream: Literal[True],
                      timeout: Timeout | None = ..., execute_timeout: float | None = ...,
                      snapshot_id: str | None = ...) -> AsyncExecuteStream: ...

    async def execute(
        self, *, code: str, language: str = "python", session_id: str | None = None,
        files: FilesArg = None, stream: bool = False, timeout: Timeout | None = None,
        execute_timeout: float | None = None, snapshot_id: str | None = None,
    ) -> ExecuteResult | AsyncExecuteStream:
        """As Client.code_interpreter.execute; with ``stream=True``,
        ``async for event in await ci.execute(code=..., stream=True)``."""
        call = calls.execute(code, language, session_id, files, stream, timeout,
                             execute_timeout, snapshot_id)
        if stream:
            return AsyncExecuteStream(await self._client._open_stream(call.request))
        return await self._client._call(call)

    async def run_batch(
        self, snippets: list[str], concurrency: int = 8, timeout: Timeout | None = None, *,
        session_ids: list[str | None] | None = None, language: str = "python",
        return_exceptions: bool = True, execute_timeout: float | None = None,
    ) -> list[Any]:
        """As Client.code_interpreter.run_batch, on this event loop: one task per snippet,
        an asyncio.Semaphore(concurrency) bounding how many run (and hold a created
        session) at once."""
        flows = calls.batch_flows(snippets, concurrency, session_ids, language, timeout,
                                  execute_timeout)
        slots = asyncio.Semaphore(concurrency)

        async def run(flow: Flow[ExecuteResult | TCIClientError]) -> ExecuteResult | TCIClientError:
            async with slots:
                return await self._client._run(flow)

        outcomes = await asyncio.gather(*map(run, flows))
        return calls.batch_outcome(list(outcomes), return_exceptions)


class AsyncRunStream:
    """The results of ``client.runs.stream(...)``: ``async for`` over it (once); ``await
    aclose()`` (or ``async with``) stops as RunStream.close does. One task per request, at
    most ``max_in_flight`` of them sending or reading at once."""

    def __init__(self, client: AsyncClient, plan: RunPlan) -> None:
        self._client = client
        self._plan = plan
        self._tally = Tally(plan.total, plan.ordered)
        self._tasks: list[asyncio.Task[None]] | None = None

    @property
    def results(self) -> list[RunResult]:
        """Every result received so far, in input order."""
        return self._tally.results()

    async def __aiter__(self) -> AsyncIterator[RunResult]:
        if self._tasks is not None:
            raise RuntimeError("an AsyncRunStream can be iterated only once")
        events: asyncio.Queue[RunResult | BaseException] = asyncio.Queue()
        slots = asyncio.Semaphore(self._plan.max_in_flight)
        self._tasks = [asyncio.create_task(self._read_chunk(chunk, slots, events))
                       for chunk in self._plan.chunks]
        try:
            while not self._tally.done:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise self._tally.failure(event)
                for result in self._tally.add(event):
                    yield result
        finally:
            await self.aclose()

    async def _read_chunk(self, chunk: Chunk, slots: asyncio.Semaphore,
                          events: asyncio.Queue[RunResult | BaseException]) -> None:
        async with slots:
            try:
                response = await self._answer(chunk)
                async with contextlib.aclosing(response):
                    reader = ChunkReader(chunk)
                    with mapped_errors():
                        async for line in response.aiter_lines():
                            result = reader.feed(line)
                            if result is not None:
                                events.put_nowait(result)
                    reader.end()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the iterating task, raised there
                events.put_nowait(exc)

    async def _answer(self, chunk: Chunk) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return await self._client._open_stream(chunk.request(self._plan.timeout))
            except RateLimitError as exc:
                delay = retry_delay(exc, attempt, self._plan.max_retries)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)
            except BadRequestError as exc:
                raise located(exc, chunk) from None

    async def aclose(self) -> None:
        """Stop: requests not sent are dropped, the ones in flight are cut."""
        for task in self._tasks or ():
            task.cancel()
        await asyncio.gather(*(self._tasks or ()), return_exceptions=True)

    async def __aenter__(self) -> AsyncRunStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncRuns(Resource["AsyncClient"]):
    """Client.runs on this event loop (see Runs): ``client.runs.stream(...)`` is not
    awaited, it is iterated with ``async for``; ``await client.runs.batch(...)``."""

    def stream(
        self, runs: Iterable[RunArg], *, ordered: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_retries: int = DEFAULT_MAX_RETRIES, timeout: Timeout | None = None,
    ) -> AsyncRunStream:
        return AsyncRunStream(self._client, plan(
            runs, ordered=ordered, chunk_size=chunk_size, max_in_flight=max_in_flight,
            max_retries=max_retries, timeout=timeout))

    async def batch(
        self, runs: Iterable[RunArg], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, max_retries: int = DEFAULT_MAX_RETRIES,
        timeout: Timeout | None = None,
    ) -> list[RunResult]:
        async with self.stream(runs, ordered=True, chunk_size=chunk_size,
                               max_in_flight=max_in_flight, max_retries=max_retries,
                               timeout=timeout) as results:
            return [result async for result in results]
