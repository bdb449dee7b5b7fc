"""The Python SDK `tci.client` against a real `tci serve`: every method of Client and
AsyncClient, streaming (stdout arrives while the cell is still blocked), run_batch (input
order, the concurrency bound seen from the server's live session list and from the
in-flight requests, sessions it created ended, given ones kept), the exception tree per
status, configuration from the environment, and that importing the SDK loads none of the
server's dependencies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tci.client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ExecuteResult,
    NotFoundError,
    Output,
    OutputEvent,
    RateLimitError,
    ResultEvent,
    SessionEndedError,
    TCIClientError,
)
from tests.conftest import free_port, wait_for

# Blocks until the test writes 'go' into the session (or 60 s pass), so that what the test
# observes while the cell runs does not depend on timing.
WAIT_FOR_GO = (
    "import os, time\n"
    "_deadline = time.time() + 60\n"
    "while not os.path.exists('go') and time.time() < _deadline:\n"
    "    time.sleep(0.02)\n"
)


@pytest.fixture
def client(server):
    with Client(base_url=server.base_url, api_key=server.key) as instance:
        yield instance


def run_async(server, body, key=None):
    """Run `body(async_client)` in a fresh event loop with an AsyncClient on the server."""

    async def main():
        async with AsyncClient(base_url=server.base_url, api_key=key or server.key) as aclient:
            return await body(aclient)

    return asyncio.run(main())


# -- import and configuration ---------------------------------------------------------------


def test_import_loads_none_of_the_server_dependencies():
    code = ("import sys, tci.client\n"
            "print(sorted({'fastapi', 'sqlalchemy', 'uvicorn', 'pydantic_settings', 'starlette'}"
            " & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_configuration_defaults_and_environment(server, monkeypatch):
    for name in ("TCI_BASE_URL", "TOGETHER_BASE_URL", "TCI_API_KEY", "TOGETHER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with Client() as default:
        assert default.base_url == "http://127.0.0.1:8000/v1"
        assert default.api_key is None
    monkeypatch.setenv("TOGETHER_BASE_URL", server.base_url)
    monkeypatch.setenv("TOGETHER_API_KEY", server.key)
    with Client() as together:
        assert together.code_interpreter.execute(code="print('together env')").stdout == (
            "together env\n")
    # TCI_* wins over TOGETHER_*: a wrong TOGETHER_ pair must not be used.
    monkeypatch.setenv("TOGETHER_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("TOGETHER_API_KEY", "tci_wrong")
    monkeypatch.setenv("TCI_BASE_URL", server.url)  # without /v1: /tci/... is served too
    monkeypatch.setenv("TCI_API_KEY", server.key)
    with Client() as tci:
        assert tci.code_interpreter.execute(code="print('tci env')").stdout == "tci env\n"


# -- execute ----------------------------------------------------------------------------------


def test_execute_returns_typed_results_and_keeps_state(client):
    ci = client.code_interpreter
    first = ci.execute(code="x = 41\nprint('hi')\nx + 1", language="python")
    assert isinstance(first, ExecuteResult)
    assert first.status == "completed"
    assert first.session_id.startswith("ses_")
    assert first.outputs == [Output("stdout", "hi\n"),
                             Output("execute_result", {"text/plain": "42"})]
    second = ci.execute(code="import sys\nprint(x, file=sys.stderr)\n1/0",
                        session_id=first.session_id)
    assert second.session_id == first.session_id
    assert second.stderr == "41\n"
    assert len(second.errors) == 1
    assert "ZeroDivisionError" in second.errors[0]
    ci.sessions.delete(first.session_id)


def test_execute_with_files_as_mapping_and_as_wire_list(client):
    ci = client.code_interpreter
    result = ci.execute(
        code="print(open('a.txt').read(), open('b.bin', 'rb').read(), open('c.txt').read())",
        files={"a.txt": "text é", "b.bin": b"\x00\xff"},
    )
    # c.txt was not given: the cell raises before printing.
    assert result.stdout == ""
    assert "FileNotFoundError" in result.errors[0]
    again = ci.execute(
        code="print(open('a.txt').read(), open('b.bin', 'rb').read(), open('c.txt').read())",
        session_id=result.session_id,
        files=[{"name": "c.txt", "encoding": "string", "content": "third"}],
    )
    assert again.stdout == "text é b'\\x00\\xff' third\n"
    ci.sessions.delete(result.session_id)


def test_async_execute_and_files(server):
    async def body(aclient):
        ci = aclient.code_interpreter
        first = await ci.execute(code="y = 6 * 7\ny", files={"in.txt": "from the request"})
        second = await ci.execute(code="print(open('in.txt').read(), y)",
                                  session_id=first.session_id)
        await ci.sessions.delete(first.session_id)
        return first, second

    first, second = run_async(server, body)
    assert first.outputs == [Output("execute_result", {"text/plain": "42"})]
    assert second.session_id == first.session_id
    assert second.stdout == "from the request 42\n"


# -- sessions -------------------------------------------------------------------------------


def test_sessions_list_and_delete(server):
    key = server.new_key("client-sessions")
    with Client(base_url=server.base_url, api_key=key) as own:
        ci = own.code_interpreter
        assert ci.sessions.list() == []
        session_id = ci.execute(code="1").session_id
        ci.execute(code="2", session_id=session_id)
        [info] = ci.sessions.list()
        assert info.id == session_id
        assert info.execute_count == 2
        assert info.started_at <= info.last_execute_at < info.expires_at
        assert ci.sessions.delete(session_id) is None
        assert ci.sessions.list() == []
        with pytest.raises(SessionEndedError) as ended:
            ci.execute(code="1", session_id=session_id)
        assert ended.value.status_code == 410
        assert "ended by the client" in ended.value.message
        with pytest.raises(SessionEndedError):
            ci.sessions.delete(session_id)
        with pytest.raises(NotFoundError):
            ci.sessions.delete("ses_does_not_exist")


def test_async_sessions_list_and_delete(server):
    key = server.new_key("client-async-sessions")

    async def body(aclient):
        ci = aclient.code_interpreter
        before = await ci.sessions.list()
        session_id = (await ci.execute(code="1")).session_id
        during = await ci.sessions.list()
        await ci.sessions.delete(session_id)
        after = await ci.sessions.list()
        with pytest.raises(SessionEndedError):
            await ci.execute(code="1", session_id=session_id)
        with pytest.raises(NotFoundError):
            await ci.sessions.delete("ses_does_not_exist")
        return before, session_id, during, after

    before, session_id, during, after = run_async(server, body, key=key)
    assert before == []
    assert [s.id for s in during] == [session_id]
    assert after == []


def test_sessions_create_and_interrupt(server):
    key = server.new_key("client-create-interrupt")
    with Client(base_url=server.base_url, api_key=key) as own:
        ci = own.code_interpreter
        made = ci.sessions.create()
        assert made.execute_count == 0 and made.started_at < made.expires_at
        assert [s.id for s in ci.sessions.list()] == [made.id]
        assert ci.sessions.interrupt(made.id) is False  # nothing running: nothing done

        result: dict = {}
        cell = threading.Thread(target=lambda: result.setdefault("r", ci.execute(
            code="import time\nkept = 1\nopen('asleep', 'w').close()\ntime.sleep(60)",
            session_id=made.id)))
        cell.start()
        deadline = time.monotonic() + 30
        while "asleep" not in [f.path for f in ci.files.list(made.id)]:
            assert time.monotonic() < deadline, "the cell never started"
            time.sleep(0.02)
        assert ci.sessions.interrupt(made.id) is True
        cell.join(30)
        assert not cell.is_alive(), "the interrupt did not stop the cell"
        [error] = result["r"].errors
        # The user's line, then the interrupt: no frame of the worker's own machinery.
        assert error.splitlines()[-3:] == ["  Cell In[1], line 4", "    time.sleep(60)",
                                           "KeyboardInterrupt"], error
        assert ci.execute(code="print(kept)", session_id=made.id).stdout == "1\n"
        with pytest.raises(NotFoundError):
            ci.sessions.interrupt("ses_does_not_exist")


def test_async_sessions_create_and_interrupt(server):
    async def body(aclient):
        ci = aclient.code_interpreter
        made = await ci.sessions.create()
        cell = asyncio.create_task(ci.execute(code="import time\ntime.sleep(60)",
                                              session_id=made.id))
        while not await ci.sessions.interrupt(made.id):
            await asyncio.sleep(0.02)
        return await asyncio.wait_for(cell, 30)

    result = run_async(server, body, key=server.new_key("client-async-interrupt"))
    assert result.errors[-1].splitlines()[-1] == "KeyboardInterrupt"


# -- files ----------------------------------------------------------------------------------


def test_files_write_list_read(client):
    ci = client.code_interpreter
    session_id = ci.execute(code="import os").session_id
    written = ci.files.write(session_id, "data/raw.bin", b"\x00\x01\xfe\xff")
    assert (written.path, written.size) == ("data/raw.bin", 4)
    assert ci.files.write(session_id, "notes.txt", "héllo").size == len("héllo".encode())
    listed = {f.path: f.size for f in ci.files.list(session_id)}
    assert listed == {"data/raw.bin": 4, "notes.txt": 6}
    seen = ci.execute(code="print(open('data/raw.bin','rb').read(), open('notes.txt').read())",
                      session_id=session_id)
    assert seen.stdout == "b'\\x00\\x01\\xfe\\xff' héllo\n"
    ci.execute(code="open('made by code.txt', 'w').write('out')", session_id=session_id)
    assert ci.files.read(session_id, "made by code.txt") == b"out"
    assert ci.files.read(session_id, "data/raw.bin") == b"\x00\x01\xfe\xff"
    with pytest.raises(NotFoundError):
        ci.files.read(session_id, "missing.txt")
    ci.sessions.delete(session_id)
    with pytest.raises(SessionEndedError):
        ci.files.list(session_id)


def test_async_files_write_list_read(server):
    async def body(aclient):
        ci = aclient.code_interpreter
        session_id = (await ci.execute(code="import os")).session_id
        written = await ci.files.write(session_id, "sub/x.txt", "async")
        listed = await ci.files.list(session_id)
        await ci.execute(code="open('y.bin', 'wb').write(bytes([1, 2, 3]))",
                         session_id=session_id)
        read = await ci.files.read(session_id, "y.bin")
        with pytest.raises(NotFoundError):
            await ci.files.read(session_id, "nope")
        await ci.sessions.delete(session_id)
        return written, listed, read

    written, listed, read = run_async(server, body)
    assert (written.path, written.size) == ("sub/x.txt", 5)
    assert [(f.path, f.size) for f in listed] == [("sub/x.txt", 5)]
    assert read == b"\x01\x02\x03"


# -- streaming ------------------------------------------------------------------------------

STREAM_CODE = "print('first', flush=True)\n" + WAIT_FOR_GO + "print('second', os.path.exists('go'))"


def check_stream(events, released_after):
    assert isinstance(events[-1], ResultEvent)
    assert all(isinstance(e, OutputEvent) for e in events[:-1])
    # 'first' was received while the cell was blocked: before the test released it.
    streamed = "".join(e.data for e in events[:released_after] if e.type == "stdout")
    assert streamed == "first\n"
    assert "".join(e.data for e in events[:-1] if e.type == "stdout") == "first\nsecond True\n"
    assert events[-1].result.stdout == "first\nsecond True\n"


def test_stream_yields_stdout_before_the_result(client):
    ci = client.code_interpreter
    session_id = ci.execute(code="pass").session_id
    events, released_after, text = [], None, ""
    with ci.execute(code=STREAM_CODE, session_id=session_id, stream=True) as stream:
        for event in stream:
            events.append(event)
            if isinstance(event, OutputEvent) and released_after is None:
                text += event.data if event.type == "stdout" else ""
                if text == "first\n":
                    released_after = len(events)
                    ci.files.write(session_id, "go", b"")
    assert released_after is not None
    check_stream(events, released_after)
    assert events[-1].result.session_id == session_id
    ci.sessions.delete(session_id)


def test_async_stream_yields_stdout_before_the_result(server):
    async def body(aclient):
        ci = aclient.code_interpreter
        session_id = (await ci.execute(code="pass")).session_id
        events, released_after, text = [], None, ""
        async with await ci.execute(code=STREAM_CODE, session_id=session_id,
                                    stream=True) as stream:
            async for event in stream:
                events.append(event)
                if isinstance(event, OutputEvent) and released_after is None:
                    text += event.data if event.type == "stdout" else ""
                    if text == "first\n":
                        released_after = len(events)
                        await ci.files.write(session_id, "go", b"")
        await ci.sessions.delete(session_id)
        return events, released_after

    events, released_after = run_async(server, body)
    assert released_after is not None
    check_stream(events, released_after)


def test_stream_errors_before_the_code_starts_are_raised_by_execute(client, server):
    with pytest.raises(NotFoundError) as missing:
        client.code_interpreter.execute(code="1", session_id="ses_unknown", stream=True)
    assert missing.value.message == "session ses_unknown not found"

    async def body(aclient):
        with pytest.raises(NotFoundError):
            await aclient.code_interpreter.execute(code="1", session_id="ses_unknown",
                                                   stream=True)
        return True

    assert run_async(server, body)


# -- errors ---------------------------------------------------------------------------------


def test_errors_map_to_the_exception_tree(server, client):
    bad = Client(base_url=server.base_url, api_key="tci_not_a_key")
    with bad, pytest.raises(AuthenticationError) as unauthorized:
        bad.code_interpreter.sessions.list()
    assert unauthorized.value.status_code == 401
    ci = client.code_interpreter
    with pytest.raises(NotFoundError) as missing:
        ci.execute(code="1", session_id="ses_unknown")
    assert missing.value.status_code == 404
    assert missing.value.errors == ["session ses_unknown not found"]
    with pytest.raises(BadRequestError) as invalid:
        ci.execute(code="1", language="cobol")  # a language no session speaks
    assert invalid.value.status_code == 400
    assert "javascript" in invalid.value.errors[0]  # the message names the offered ones
    with pytest.raises(BadRequestError) as bad_file:
        ci.execute(code="1", files=[{"name": "x", "encoding": "base64", "content": "!!!"}])
    assert bad_file.value.status_code == 400
    for error in (unauthorized.value, missing.value, invalid.value, bad_file.value):
        assert isinstance(error, APIStatusError)
        assert isinstance(error, TCIClientError)


def test_async_errors_map_to_the_exception_tree(server):
    async def body(aclient):
        caught = []
        for call in (
            lambda: aclient.code_interpreter.execute(code="1", session_id="ses_unknown"),
            lambda: aclient.code_interpreter.execute(code="1", language="cobol"),
            lambda: aclient.code_interpreter.files.list("ses_unknown"),
        ):
            with pytest.raises(TCIClientError) as info:
                await call()
            caught.append(type(info.value))
        return caught

    assert run_async(server, body) == [NotFoundError, BadRequestError, NotFoundError]

    async def unauthorized(aclient):
        with pytest.raises(AuthenticationError):
            await aclient.code_interpreter.sessions.list()
        return True

    assert run_async(server, unauthorized, key="tci_not_a_key")


def test_unreachable_server_is_an_api_connection_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with Client(base_url=url, api_key="k") as client, pytest.raises(APIConnectionError) as sync:
        client.code_interpreter.execute(code="1")
    assert isinstance(sync.value.__cause__, httpx.ConnectError)

    async def main():
        async with AsyncClient(base_url=url, api_key="k") as aclient:
            with pytest.raises(APIConnectionError) as info:
                await aclient.code_interpreter.sessions.list()
            return info.value

    assert isinstance(asyncio.run(main()).__cause__, httpx.ConnectError)


def test_too_many_sessions_is_a_rate_limit_error_with_retry_after(server_factory):
    limited = server_factory(max_sessions="1")
    with Client(base_url=limited.base_url, api_key=limited.key) as client:
        ci = client.code_interpreter
        first = ci.execute(code="1").session_id
        with pytest.raises(RateLimitError) as limit:
            ci.execute(code="1")
        assert limit.value.status_code == 429
        assert limit.value.retry_after is not None
        assert limit.value.retry_after > 0
        ci.sessions.delete(first)
        # The slot is free again.
        ci.sessions.delete(ci.execute(code="1").session_id)


# -- run_batch ------------------------------------------------------------------------------


class CountingTransport(httpx.HTTPTransport):
    """The real transport, counting execute requests in flight (sent, answer not back)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.in_flight = self.most = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        counted = request.url.path.endswith("/tci/execute")
        if counted:
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
        try:
            return super().handle_request(request)
        finally:
            if counted:
                with self.lock:
                    self.in_flight -= 1


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        counted = request.url.path.endswith("/tci/execute")
        if counted:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            return await super().handle_async_request(request)
        finally:
            if counted:
                self.in_flight -= 1


class Gatekeeper(threading.Thread):
    """Polls the key's live sessions while a batch runs. Snippets block until released;
    it releases them (writes 'go') only once it sees as many unreleased sessions alive at
    the same time as the batch may run: min(concurrency, snippets not yet released). So
    the batch can only finish if that many really ran at once, and `most_live` records the
    most live sessions ever seen."""

    def __init__(self, server, key: str, total: int, concurrency: int) -> None:
        super().__init__(daemon=True)
        self.client = Client(base_url=server.base_url, api_key=key)
        self.total, self.concurrency = total, concurrency
        self.released: set[str] = set()
        self.most_live = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                live = {s.id for s in self.client.code_interpreter.sessions.list()}
                self.most_live = max(self.most_live, len(live))
                waiting = live - self.released
                need = min(self.concurrency, self.total - len(self.released))
                if need and len(waiting) >= need:
                    for session_id in waiting:
                        self.client.code_interpreter.files.write(session_id, "go", b"")
                    self.released |= waiting
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()

    def __enter__(self) -> Gatekeeper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(timeout=30)


def gated_snippets(count: int) -> list[str]:
    return [WAIT_FOR_GO + f"print({i}, os.path.exists('go'))" for i in range(count)]


def test_batch_results_in_order_with_bounded_concurrency(server):
    key = server.new_key("client-batch")
    transport = CountingTransport()
    snippets = gated_snippets(5)
    with Client(base_url=server.base_url, api_key=key, transport=transport) as client:
        with Gatekeeper(server, key, total=5, concurrency=2) as gate:
            results = client.code_interpreter.run_batch(snippets, concurrency=2, timeout=120)
        assert gate.error is None
        # Every snippet saw 'go': each was released by the gatekeeper, which needed to see
        # two of them alive at once; it never saw more than two.
        assert [r.stdout for r in results] == [f"{i} True\n" for i in range(5)]
        assert gate.most_live == 2
        assert transport.most == 2
        assert len({r.session_id for r in results}) == 5
        assert client.code_interpreter.sessions.list() == []  # the batch ended its sessions


def test_async_batch_results_in_order_with_bounded_concurrency(server):
    key = server.new_key("client-async-batch")
    transport = AsyncCountingTransport()
    snippets = gated_snippets(4)

    async def main():
        async with AsyncClient(base_url=server.base_url, api_key=key,
                               transport=transport) as aclient:
            results = await aclient.code_interpreter.run_batch(snippets, concurrency=3)
            return results, await aclient.code_interpreter.sessions.list()

    with Gatekeeper(server, key, total=4, concurrency=3) as gate:
        results, left = asyncio.run(main())
    assert gate.error is None
    assert [r.stdout for r in results] == [f"{i} True\n" for i in range(4)]
    assert gate.most_live == 3
    assert transport.most == 3
    assert left == []


def test_batch_in_given_sessions_keeps_them(client):
    ci = client.code_interpreter
    given = ci.execute(code="x = 'kept'").session_id
    results = ci.run_batch(["print(x)", "print('new')", "x = x + '!'\nprint(x)"], concurrency=2,
                           session_ids=[given, None, given])
    assert [r.stdout for r in results] in (
        ["kept\n", "new\n", "kept!\n"],  # the two calls on `given` run one after the other,
        ["kept!\n", "new\n", "kept!\n"],  # in either order
    )
    assert results[0].session_id == results[2].session_id == given
    live = {s.id for s in ci.sessions.list()}
    assert given in live
    assert results[1].session_id not in live
    ci.sessions.delete(given)


def test_batch_failures_take_their_place_or_raise(server):
    key = server.new_key("client-batch-errors")
    with Client(base_url=server.base_url, api_key=key) as client:
        ci = client.code_interpreter
        ended = ci.execute(code="1").session_id
        ci.sessions.delete(ended)
        # By default a failure is a value in its snippet's place: nothing else is lost.
        outcomes = ci.run_batch(["print('ok')", "print('never')", "1/0"],
                                session_ids=[None, ended, None])
        assert outcomes[0].stdout == "ok\n"
        assert isinstance(outcomes[1], SessionEndedError)
        assert "ZeroDivisionError" in outcomes[2].errors[0]  # an error output is a result
        with pytest.raises(SessionEndedError):
            ci.run_batch(["print('ok')", "print('never')"], session_ids=[None, ended],
                         return_exceptions=False)
        assert ci.sessions.list() == []  # the failing batches still ended what they created

    async def body(aclient):
        return await aclient.code_interpreter.run_batch(["1", "2"], session_ids=[ended, None])

    outcomes = run_async(server, body, key=key)
    assert isinstance(outcomes[0], SessionEndedError)
    assert outcomes[1].outputs == [Output("execute_result", {"text/plain": "2"})]


def test_batch_snippet_that_times_out_loses_nothing_else_and_no_session_is_left(server):
    key = server.new_key("client-batch-timeout")
    with Client(base_url=server.base_url, api_key=key) as client:
        ci = client.code_interpreter
        outcomes = ci.run_batch(["import time\ntime.sleep(60)", "print(2)", "print(3)"],
                                concurrency=3, timeout=5)
        assert isinstance(outcomes[0], APITimeoutError)
        assert [o.stdout for o in outcomes[1:]] == ["2\n", "3\n"]
        # The snippet's session id never reached the client; the server ended it.
        wait_for(lambda: ci.sessions.list() == [], "the timed-out snippet's session to end")


def test_execute_timeout_is_the_servers_limit_for_that_call(server):
    with Client(base_url=server.base_url, api_key=server.key) as client:
        ci = client.code_interpreter
        result = ci.execute(code="import time\ntime.sleep(60)", execute_timeout=1)
        assert result.errors[0].startswith(
            "TimeoutError: execution timed out after 1 s (the call's timeout)")
        [outcome] = ci.run_batch(["import time\ntime.sleep(60)"], execute_timeout=1)
        assert outcome.errors[0].startswith("TimeoutError: execution timed out after 1 s")
        with pytest.raises(BadRequestError, match="more than this server's maximum"):
            ci.execute(code="1", execute_timeout=100_000)
        ci.sessions.delete(result.session_id)
