"""Host side of the worker protocol: execute -> outputs, interrupt on timeout, detect death.

All reads happen in event-loop reader callbacks: no thread or process per call, and the
stdout/stderr pipes are always drained at once (the worker's ordering relies on that).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tci.errors import WorkerDied
from tci.kernel.coalesce import LineCoalescer
from tci.kernel.ends import EXITED, CallResult, EndKind, EndReason
from tci.kernel.frames import Frame, FrameReader, JsonBudget, Skipped, bundle_of, text_of
from tci.kernel.output_limits import OutputLimits
from tci.kernel.outputs import ERROR_RESERVE, RICH, OutputCollector, OutputSink
from tci.sandbox.launcher import Sandbox
from tci.worker.protocol import ProtocolError, encode

_READ_SIZE = 1 << 16
# How long a death report waits for the sandbox's process to be reaped so the kernel's words
# (signal, exit code) can be read: a dead process is reaped within milliseconds; the bound
# keeps a report from hanging on one stuck exiting (then it says only that it ended).
_REAP_WAIT_SECONDS = 2.0

DeathListener = Callable[[], None]
# A death we did not cause: the kernel's words (signal, exit code) come with `death_reason`.
_ENDED = EndReason(EndKind.WORKER_DIED)


@dataclass
class _Pending:
    request_id: int
    collector: OutputCollector
    done: asyncio.Future[dict[str, Any]]
    json_budget: JsonBudget
    coalescer: LineCoalescer | None = None
    started: bool = False  # the worker said the cell is running (its "started" event)
    interrupt_wanted: bool = False  # interrupted before that: signal on "started"


def _fail(future: asyncio.Future[Any], failure: WorkerDied) -> None:
    """Fail a future that may have no one left awaiting it (a call that timed out and was
    killed, a worker that died before it was ready): marked as retrieved, since the death is
    reported through the call's result and `death`, and otherwise asyncio would log
    "Future exception was never retrieved" for every such death."""
    future.set_exception(failure)
    future.exception()


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the worker process ended"
    code = returncode - 128 if returncode > 128 else -returncode if returncode < 0 else 0
    if code > 0:
        try:
            name = signal.Signals(code).name
        except ValueError:
            name = f"signal {code}"
        return f"the worker process was killed by {name}"
    return f"the worker process exited with code {returncode}"


class WorkerConnection:
    """One live worker in one sandbox."""

    def __init__(self, sandbox: Sandbox, limits: OutputLimits) -> None:
        self.sandbox = sandbox
        self.limits = limits
        self._ids = itertools.count(1)
        self._frames = FrameReader(self._allowance)
        self._pending: _Pending | None = None
        # Told once if the worker dies while no call is running (a timer calling os._exit,
        # say), so that its owner ends the session at once instead of at the next call.
        self.on_death: DeathListener | None = None
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")
        }
        # How the worker died, once it has: WORKER_DIED if it exited or was killed from
        # outside (the kernel's words filled in by `death_reason`), or the kind of our own
        # kill (PROTOCOL, TIMEOUT, CLIENT_GONE) with its words.
        self.death: EndReason | None = None
        loop = asyncio.get_running_loop()
        for fd in (sandbox.event_fd, sandbox.stdout_fd, sandbox.stderr_fd):
            os.set_blocking(fd, False)
        loop.add_reader(sandbox.event_fd, self._on_events)
        loop.add_reader(sandbox.stdout_fd, self._on_stream, sandbox.stdout_fd, "stdout")
        loop.add_reader(sandbox.stderr_fd, self._on_stream, sandbox.stderr_fd, "stderr")
        self._readers = [sandbox.event_fd, sandbox.stdout_fd, sandbox.stderr_fd]

    # -- readers ---------------------------------------------------------------------------

    def _on_stream(self, fd: int, name: str) -> None:
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop_reading(fd)
            return
        text = self._decoders[name].decode(chunk)
        pending = self._pending
        if pending is not None and text:
            pending.collector.add_stream(name, text)
        # Output with no call running (a background thread, a leftover subprocess) is dropped.

    def _allowance(self) -> int:
        """Body bytes the next event frame may hold: the running call's output budget (plus
        room for one last error), nothing between calls."""
        pending = self._pending
        if pending is None:
            return 0
        return pending.collector.remaining() + ERROR_RESERVE

    def _on_events(self) -> None:
        try:
            chunk = os.read(self.sandbox.event_fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop_reading(self.sandbox.event_fd)
            self._mark_dead()
            return
        try:
            for frame in self._frames.feed(chunk):
                self._dispatch(frame)
        except ProtocolError as exc:
            self._protocol_failure(str(exc))

    def _dispatch(self, frame: Frame | Skipped) -> None:
        pending = self._pending
        if isinstance(frame, Skipped):
            if pending is not None:
                pending.collector.notice_truncated()
            return
        head = frame.head
        kind = head.get("type")
        if kind == "ready":
            if not self._ready.done():
                self._ready.set_result(head)
            return
        if pending is None or head.get("id") != pending.request_id:
            return
        if kind == "done":
            if pending.coalescer is not None:
                pending.coalescer.flush()
            if not pending.done.done():
                pending.done.set_result(head)
            return
        if kind == "started":
            pending.started = True
            if pending.interrupt_wanted:
                self.sandbox.interrupt()
            return
        if kind == "error":
            pending.collector.add_user_error(text_of(frame))
        elif kind in RICH:
            bundle = bundle_of(frame, pending.json_budget)
            if bundle is None:
                pending.collector.notice_dropped(
                    f"{kind} with more JSON values than the call had left of "
                    f"{self.limits.max_json_values} (TCI_MAX_OUTPUT_JSON_VALUES)")
            else:
                pending.collector.add_rich(kind, bundle)

    def _protocol_failure(self, detail: str) -> None:
        self._stop_reading(self.sandbox.event_fd)  # nothing more is read from a broken channel
        self.sandbox.kill()
        self._mark_dead(EndReason(EndKind.PROTOCOL, f"the worker broke the protocol ({detail})"))

    def _stop_reading(self, fd: int) -> None:
        if fd in self._readers:
            self._readers.remove(fd)
            asyncio.get_running_loop().remove_reader(fd)

    def _mark_dead(self, death: EndReason = _ENDED) -> None:
        if self.death is None:
            self.death = death
        failure = WorkerDied(str(self.death))
        if not self._ready.done():
            _fail(self._ready, failure)
        if self._pending is not None and not self._pending.done.done():
            _fail(self._pending.done, failure)
        elif self._pending is None and self.on_death is not None:
            on_death, self.on_death = self.on_death, None
            on_death()

    async def death_reason(self) -> EndReason:
        """How the worker died: our own words if we killed it, else the kernel's (signal or
        exit code), read once the process has been reaped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sandbox.process.wait(), timeout=_REAP_WAIT_SECONDS)
        if self.death is not None and self.death.detail:
            return self.death
        # A sandbox the host killed for breaking its protocol says so (fork path's init).
        problem = getattr(self.sandbox.process, "problem", None)
        kind = self.death.kind if self.death is not None else EndKind.WORKER_DIED
        self.death = EndReason(kind, problem or describe_exit(self.sandbox.process.returncode))
        return self.death

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in list(self._readers):
            loop.remove_reader(fd)
        self._readers.clear()

    # -- requests --------------------------------------------------------------------------

    def interrupt(self) -> bool:
        """SIGINT to the worker, like Ctrl-C in Jupyter, if a request is in flight: the cell
        gets a KeyboardInterrupt, its call ends with that `error` output, and the worker lives
        on. The one way a cell is interrupted (timeouts, disconnected streams, clients).
        Touches no lock: safe to call while `request` awaits. False if idle (nothing is sent)
        or the worker is gone.

        The signal goes only once the worker has reported the cell started. Sent earlier, it
        could land before the cell and be lost; and since the next request is written only
        after this one's "done" is read, a SIGINT sent while this one is pending can never
        reach the next cell: the worker drops a SIGINT that finds no cell running."""
        pending = self._pending
        if pending is None or self.death is not None:
            return False
        if pending.started:
            return self.sandbox.interrupt()
        pending.interrupt_wanted = True
        return True

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except WorkerDied:
            raise WorkerDied(str(await self.death_reason())) from None

    def _send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        # Commands are small; a blocking write on a pipe the worker always reads is fine.
        fd = self.sandbox.command_fd
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BrokenPipeError as exc:
                raise WorkerDied(str(self.death or _ENDED)) from exc

    async def request(
        self,
        message: dict[str, Any],
        timeout: float,
        grace: float,
        listener: OutputSink | None = None,
    ) -> CallResult:
        """Send one request and collect its outputs until done, timeout or death. A death
        is the result's `ended`; its notice is the caller's to add (it may know better why,
        e.g. the kernel's out-of-memory kill)."""
        if self.death is not None:
            raise WorkerDied(str(self.death))
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        collector = OutputCollector(self.limits.max_bytes)
        coalescer = None
        if listener is not None:
            coalescer = LineCoalescer(listener, self.limits.line_delay_seconds, collector.spend)
            collector.on_output = coalescer
        pending = _Pending(
            request_id, collector, loop.create_future(),
            JsonBudget(self.limits.max_json_values), coalescer,
        )
        self._pending = pending
        try:
            self._send({**message, "id": request_id})
            return await self._await_done(pending, timeout, grace)
        except asyncio.CancelledError:
            # The caller went away (its client disconnected or timed out): stop the cell, and
            # wait for it to unwind so the next call finds the session idle, state intact.
            await self._abandon(pending, grace)
            raise
        finally:
            if coalescer is not None:
                coalescer.flush()
            self._pending = None

    async def _abandon(self, pending: _Pending, grace: float) -> None:
        if self.death is not None or not self.interrupt():
            return
        try:
            await asyncio.wait_for(asyncio.shield(pending.done), grace)
        except (TimeoutError, WorkerDied):
            self.sandbox.kill()
            self._mark_dead(EndReason(
                EndKind.CLIENT_GONE,
                f"its client went away and the cell did not stop within {grace:g} s of the "
                "interrupt, so the worker was killed",
            ))
            self._pending = None
            if self.on_death is not None:
                on_death, self.on_death = self.on_death, None
                on_death()

    async def _await_done(self, pending: _Pending, timeout: float, grace: float) -> CallResult:
        collector = pending.collector
        try:
            done = await asyncio.wait_for(asyncio.shield(pending.done), timeout)
            end = EndKind.OK if done.get("ok") else EndKind.ERROR
            return CallResult(collector.outputs, end, EXITED if done.get("exit") is True else None)
        except WorkerDied:
            return await self._died(collector)
        except TimeoutError:
            pass
        # Timed out: interrupt, give the code a grace period to unwind, then kill.
        self.interrupt()
        try:
            await asyncio.wait_for(asyncio.shield(pending.done), grace)
        except TimeoutError:
            self.sandbox.kill()
            death = EndReason(EndKind.TIMEOUT, (
                f"execution timed out after {timeout:g} s (TCI_EXECUTE_TIMEOUT) and did not stop "
                f"within {grace:g} s of the interrupt, so the worker was killed"
            ))
            self._mark_dead(death)
            return CallResult(collector.outputs, death.kind, death)
        except WorkerDied:
            return await self._died(collector)
        collector.replace_interrupt_error(
            f"TimeoutError: execution timed out after {timeout:g} s (TCI_EXECUTE_TIMEOUT) and "
            "was interrupted; the session is still alive."
        )
        return CallResult(collector.outputs, EndKind.INTERRUPTED)

    async def _died(self, collector: OutputCollector) -> CallResult:
        death = await self.death_reason()
        return CallResult(collector.outputs, death.kind, death)
