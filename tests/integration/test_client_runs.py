"""The SDK's one-shot runs (`client.runs`, sync and async) against a real `tci serve`: results
as each run finishes (a fast one's before a slow one's) or in input order; leaving a stream
stops the server's runs; inputs split into requests of `chunk_size` (seen at the transport),
at most `max_in_flight` at once, errors naming runs by their input index; the run queue's 429
raised or retried after Retry-After; a connection cut mid-answer (a loopback proxy that
drops it) raises RunsIncompleteError holding the results that came."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tci.client import (
    APIConnectionError,
    AsyncClient,
    BadRequestError,
    Client,
    RateLimitError,
    Run,
    RunResult,
    RunsIncompleteError,
)
from tests.conftest import Server, wait_for

SLOW = {"code": "import time; time.sleep(60); print('slow')", "timeout": 90}


def fast(i: int) -> dict:
    return {"code": f"print({i})", "expected_stdout": str(i)}


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def runs_busy(server: Server) -> float:
    return metric(server, "tci_runs_running") + metric(server, "tci_runs_queued")


class Counting(httpx.BaseTransport):
    """The real HTTP transport, counting the batch requests, their runs, and how many
    answers are open at once."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sizes: list[int] = []
        self.statuses: list[int] = []
        self.open = self.peak = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sizes.append(len(json.loads(request.read())["runs"]))
        response = self.inner.handle_request(request)
        self.statuses.append(response.status_code)
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=Closing(response.stream, self),
                              extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


class Closing(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, counter: Counting) -> None:
        self.inner, self.counter, self.closed = inner, counter, False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.inner

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with self.counter.lock:
                self.counter.open -= 1
        self.inner.close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(base_url=server.base_url, api_key=server.key) as instance:
        yield instance


def run_async(server: Server, body, **client_options):
    async def main():
        async with AsyncClient(base_url=server.base_url, api_key=server.key,
                               **client_options) as aclient:
            return await body(aclient)

    return asyncio.run(main())


# -- as they finish, in input order -----------------------------------------------------


def test_a_fast_result_comes_before_a_slow_one_and_leaving_stops_the_runs(
        client: Client, server: Server) -> None:
    started = time.monotonic()
    with client.runs.stream([SLOW, fast(1)]) as results:
        first = next(iter(results))
        waited = time.monotonic() - started
    closed = time.monotonic() - started
    assert (first.index, first.verdict, first.stdout) == (1, "OK", "1\n")
    assert waited < 55  # the slow run sleeps 60 s: its result had not come
    # Closing cut the answer being read at once (not after the slow run), and the server,
    # seeing its client gone, stopped the slow run.
    assert closed < 55
    wait_for(lambda: runs_busy(server) == 0, "the slow run to stop once the stream closed",
             timeout=40)


def test_async_fast_result_comes_first_and_leaving_stops_the_runs(server: Server) -> None:
    async def body(aclient: AsyncClient) -> tuple[RunResult, float]:
        started = time.monotonic()
        async with aclient.runs.stream([SLOW, fast(1)]) as results:
            async for result in results:
                return result, time.monotonic() - started
        raise AssertionError("no result")

    first, waited = run_async(server, body)
    assert (first.index, first.stdout) == (1, "1\n")
    assert waited < 55
    wait_for(lambda: runs_busy(server) == 0, "the slow run to stop once the stream closed",
             timeout=40)


MIXED = [
    {"code": "import time; time.sleep(2); print('late')"},  # last to finish, first in order
    Run(code="print(input()[::-1])", stdin="abc", expected_stdout="cba"),
    Run(code="print(42)", expected_stdout="41"),
    {"code": "raise ValueError('boom')"},
    Run(code="open('out.bin', 'wb').write(bytes([0, 255]) + open('in.txt').read().encode())",
        files={"in.txt": "hi"}, fetch_files=["out.bin", "missing.txt"]),
]


def check_mixed(results: list[RunResult]) -> None:
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.verdict for r in results] == ["OK", "OK", "WRONG_ANSWER", "RUNTIME_ERROR", "OK"]
    assert results[0].stdout == "late\n"
    assert results[1].stdout == "cba\n"
    assert results[3].stderr.rstrip().endswith("ValueError: boom")
    assert results[4].files == {"out.bin": b"\x00\xffhi"}
    assert results[0].files is None  # asked none


def test_batch_returns_every_verdict_in_input_order(client: Client) -> None:
    check_mixed(client.runs.batch(MIXED))


def test_ordered_stream_yields_in_input_order(client: Client) -> None:
    check_mixed(list(client.runs.stream(MIXED, ordered=True)))


def test_async_batch_in_input_order(server: Server) -> None:
    async def body(aclient: AsyncClient) -> list[RunResult]:
        return await aclient.runs.batch(MIXED)

    check_mixed(run_async(server, body))


# -- requests of chunk_size ---------------------------------------------------------------


def test_runs_are_split_into_requests_the_server_accepts(server_factory) -> None:
    small = server_factory(batch_max_runs=2)
    transport = Counting()
    runs = [{"code": f"import time; time.sleep(1); print({i})"} for i in range(5)]
    with Client(base_url=small.base_url, api_key=small.key, transport=transport) as client:
        results = client.runs.batch(runs, chunk_size=2, max_in_flight=2)
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]
        assert all(r.verdict == "OK" for r in results)
        assert sorted(transport.sizes) == [1, 2, 2]
        assert transport.peak == 2  # two answers open at once, never three

        with pytest.raises(BadRequestError) as refused:
            client.runs.batch(runs, chunk_size=3)
        assert refused.value.status_code == 413
        assert "TCI_BATCH_MAX_RUNS" in str(refused.value)
        assert "chunk_size" in str(refused.value)

        bad = [fast(0), fast(1), fast(2), {"code": "1", "timeout": -1}]
        with pytest.raises(BadRequestError) as invalid:
            client.runs.batch(bad, chunk_size=2)
        # The server said runs.1 of the second request: the SDK names the input's run 3.
        assert "runs.3.timeout" in str(invalid.value), invalid.value


def test_async_split_into_requests_streams_every_result(server_factory) -> None:
    small = server_factory(batch_max_runs=2)

    async def body(aclient: AsyncClient) -> list[RunResult]:
        return [r async for r in aclient.runs.stream([fast(i) for i in range(5)],
                                                        chunk_size=2, max_in_flight=3)]

    results = run_async(small, body)
    assert sorted(r.index for r in results) == [0, 1, 2, 3, 4]
    assert all(r.stdout == f"{r.index}\n" and r.verdict == "OK" for r in results)


# -- the run queue's 429 --------------------------------------------------------------------


def hold_the_only_slot(server: Server, seconds: float) -> httpx.Response:
    """A batch whose one run keeps the server's only run slot for `seconds`."""
    http = server.client(timeout=120)
    holding = http.send(http.build_request("POST", "/v1/tci/batch", json={"runs": [
        {"code": f"import time; time.sleep({seconds})", "timeout": 60}]}), stream=True)
    assert holding.status_code == 200
    wait_for(lambda: metric(server, "tci_runs_running") == 1, "the holding run to start")
    return holding


def test_a_full_queue_raises_or_is_retried_after_retry_after(server_factory) -> None:
    tight = server_factory(run_concurrency=1, run_queue_size=0)
    transport = Counting()
    holding = hold_the_only_slot(tight, 4)
    try:
        with Client(base_url=tight.base_url, api_key=tight.key, transport=transport) as client:
            with pytest.raises(RateLimitError) as refused:
                client.runs.batch([fast(1)], max_retries=0)
            assert refused.value.retry_after == 1
            assert "TCI_RUN_QUEUE_SIZE" in str(refused.value)

            (result,) = client.runs.batch([fast(1)], max_retries=60)
        assert (result.verdict, result.stdout) == ("OK", "1\n")
        assert transport.statuses[0] == 429 and transport.statuses[-1] == 200
        assert transport.statuses.count(429) >= 2  # refused, waited, tried again
    finally:
        holding.close()


def test_async_retries_a_full_queue(server_factory) -> None:
    tight = server_factory(run_concurrency=1, run_queue_size=0)
    holding = hold_the_only_slot(tight, 3)

    async def body(aclient: AsyncClient) -> tuple[list[RunResult], BaseException | None]:
        try:
            await aclient.runs.batch([fast(1)], max_retries=0)
        except RateLimitError as exc:
            refused: BaseException | None = exc
        else:
            refused = None
        return await aclient.runs.batch([fast(1)], max_retries=60), refused

    try:
        (result,), refused = run_async(tight, body)
    finally:
        holding.close()
    assert isinstance(refused, RateLimitError) and refused.retry_after == 1
    assert (result.verdict, result.stdout) == ("OK", "1\n")


# -- a connection cut mid-answer ------------------------------------------------------------


class CuttingProxy:
    """A loopback TCP proxy to the server that forwards the first result line of an answer,
    then drops both connections: the network failing in the middle of a batch."""

    def __init__(self, server: Server) -> None:
        self.target = ("127.0.0.1", server.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        with self.listener:
            downstream, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
        seen = b""
        while chunk := upstream.recv(65536):
            downstream.sendall(chunk)
            seen += chunk
            if b'"verdict"' in seen and b"}\n" in seen:  # a whole result went through
                break
        for sock in (downstream, upstream):
            sock.shutdown(socket.SHUT_RDWR)  # close() alone would wait for _pump's recv
            sock.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass


def test_a_cut_connection_raises_with_the_results_that_came(
        server: Server) -> None:
    proxy = CuttingProxy(server)
    received = []
    with (Client(base_url=proxy.base_url, api_key=server.key) as client,
          pytest.raises(RunsIncompleteError) as cut):
        for result in client.runs.stream([SLOW, fast(1), SLOW]):
            received.append(result)
    assert [(r.index, r.stdout) for r in received] == [(1, "1\n")]
    assert [(r.index, r.stdout) for r in cut.value.results] == [(1, "1\n")]
    assert cut.value.missing == [0, 2]
    assert isinstance(cut.value.__cause__, APIConnectionError)
    wait_for(lambda: runs_busy(server) == 0, "the server to stop the cut batch's runs",
             timeout=40)


def test_batch_keeps_the_results_that_came_before_a_cut(server: Server) -> None:
    proxy = CuttingProxy(server)

    async def body(aclient: AsyncClient) -> RunsIncompleteError:
        try:
            await aclient.runs.batch([SLOW, fast(7)])
        except RunsIncompleteError as exc:
            return exc
        raise AssertionError("the batch finished through a cut connection")

    async def main() -> RunsIncompleteError:
        async with AsyncClient(base_url=proxy.base_url, api_key=server.key) as aclient:
            return await body(aclient)

    cut = asyncio.run(main())
    assert [(r.index, r.stdout) for r in cut.results] == [(1, "7\n")]
    assert cut.missing == [0]
    wait_for(lambda: runs_busy(server) == 0, "the server to stop the cut batch's runs",
             timeout=40)
