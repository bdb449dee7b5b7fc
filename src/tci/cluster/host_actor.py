"""HostActor: a LocalHost on one Ray node, for the gateways (tci.cluster.ray_host) to use.

One per node that offers the `tci_host` resource: detached (it outlives the gateway that
made it), named after its node, pinned to it, and run by that node's raylet, so as root and
with the node's own TCI_ settings (pool, limits, sandbox directory), like `tci serve` on a
single machine. Several gateways call it at once: calls to one session are serialized here
too, not only by each gateway's lock. Its sessions are a SessionTable (tci/sessions/table.py),
the manager's own bookkeeping: a lock each, expiry (the safety net when the gateway that
made a session is gone), an end that happens once, and why recent ones ended.

Every method answers with plain data (a Reply). Exceptions are not sent through Ray: its
wrappers would lose SessionGone's reason and the HTTP status of a TCIError.

Paused sessions and snapshots (sessions/pause.py) are volume images in the node's state store,
TCI_STATE_DIR, which every host of a cluster mounts from one shared directory: a session
paused on one host resumes on whichever host the gateway picks, and any host can free a kept
state. A paused session leaves this host's table without ending: its feed says MOVED
(hosts/base.py), not an end, so a gateway holding the session drops it recording nothing,
and calls that waited for it find it MOVED.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from tci.cluster.streamed import OutlinedResult
from tci.config import Settings
from tci.errors import TCIError, TooManySessions
from tci.hosts.base import (
    MOVED,
    CallResult,
    Cell,
    EndKind,
    EndReason,
    HostedSession,
    SessionGone,
    StateNotRestored,
    StateNotSaved,
)
from tci.hosts.local import LocalHost
from tci.sandbox.egress_filter import ClusterFeed
from tci.sessions.table import SessionTable, utcnow
from tci.workspace import DecodedFile

log = logging.getLogger(__name__)

# A session id this host does not know: it ran on this node before the host was restarted
# clean (the gateway routes by the host's name, which changes when a node comes back).
UNKNOWN_SESSION = EndReason(EndKind.HOST_LOST, "host lost: the host restarted")


# Ray's threads in a gateway and a host actor take the GIL too, and a thread waiting for it
# waits up to the switch interval (5 ms by default) for each handoff: a warm call crosses
# several (event loop, Ray's core worker, back). 0.2 ms cut the gateway's cost over a single
# machine from 16.1 to 4.2 ms p50 (bench/cluster.py --warm-only, 2 cores).
GIL_SWITCH_SECONDS = 0.0002


def short_gil_handoffs() -> None:
    """For a process whose event loop shares it with Ray's threads."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


# A call that left its session alive, as `run` answers it: [outputs, EndKind name].
PlainResult = list[Any]


@dataclass(frozen=True)
class Reply:
    """What a call returns: its value, or how the session ended, or the error to raise."""

    value: Any = None
    gone: EndReason | None = None
    error: TCIError | None = None
    # A state that could not be saved or restored (StateNotSaved, StateNotRestored), in words
    # for the client; `state_missing` when this host does not find it in its TCI_STATE_DIR.
    state_problem: str | None = None
    state_missing: bool = False


@dataclass(eq=False)
class HostSession:
    """A live session of this host, as its table (tci/sessions/table.py) holds it."""

    id: str
    hosted: HostedSession
    expires_at: datetime
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ended: EndReason | None = None
    key_id: int | None = None  # whose it is: the gateways know, this host does not


@dataclass(frozen=True)
class HostInfo:
    name: str
    free: int  # sessions it can still open (its capacity less those live)
    live: int
    pool_ready: int
    pool_size: int
    starts_failed: int
    capacity: int  # sessions it holds at once (TCI_MAX_SESSIONS, or what its machine holds)
    seq: int  # its feed's last end (a gateway that joins reads on from there)


@dataclass(frozen=True)
class Ended:
    """One session that ended on this host, for gateways that did not end it themselves;
    or, with the reason MOVED, that was paused and left it without ending."""

    seq: int
    session_id: str
    reason: EndReason
    cpu_seconds: float | None


@dataclass(frozen=True)
class Feed:
    """The answer to `ended_since`: ends after the asked-for sequence number, and capacity."""

    ended: list[Ended]
    last: int
    info: HostInfo


class HostActor:
    def __init__(self, name: str) -> None:
        short_gil_handoffs()
        self.name = name
        self.settings = Settings()
        self.host = LocalHost(self.settings)
        self.sessions: SessionTable[HostSession] = SessionTable(
            self.settings.remember_ended_sessions, self._finish)
        self.feed: collections.deque[Ended] = collections.deque(
            maxlen=self.settings.ray_ended_feed_entries)
        self.seq = 0
        self._changed: asyncio.Event | None = None
        self._start: asyncio.Task[None] | None = None
        self._cluster: ClusterFeed | None = None

    # -- the host ----------------------------------------------------------------------------

    async def start(self) -> Reply:
        """Start the LocalHost and check a probe session (once, whoever asks first); an
        error, such as a protection missing, is answered to every caller."""
        if self._start is None:
            self._start = asyncio.ensure_future(self._start_host())
        try:
            await asyncio.shield(self._start)
        except TCIError as exc:
            return Reply(error=exc)
        return Reply(self.info())

    async def _start_host(self) -> None:
        self._changed = asyncio.Event()
        await self._refuse_cluster()
        await self.host.start()  # refuses (SandboxUnavailable) if its self-check fails
        self.sessions.start_reaper(self.settings.reap_interval_seconds)
        log.info("tci host %s ready", self.name)

    async def _refuse_cluster(self) -> None:
        """Egress sandboxes never reach a node of the cluster (its Ray ports, its servers):
        every node's address is refused before the first sandbox starts, and kept current."""
        egress_filter = self.host.launcher.egress_filter
        if egress_filter is None:
            return
        import ray  # a host actor runs in Ray: the import is there already

        self._cluster = ClusterFeed(egress_filter, ray.nodes,
                                    self.settings.ray_nodes_refresh_seconds)
        await self._cluster.start()

    def info(self) -> HostInfo:
        stats = self.host.stats()
        free = max(0, stats.capacity - len(self.sessions))
        return HostInfo(self.name, free, len(self.sessions), stats.pool_ready, stats.pool_size,
                        stats.starts_failed, stats.capacity, self.seq)

    async def ended_since(self, seq: int, wait: float) -> Feed:
        """Sessions ended after `seq`; waits up to `wait` seconds for one if there are none.
        A gateway keeps one such call pending per host: its failure is how it learns, from
        Ray, that the host is lost."""
        assert self._changed is not None, "start() first"
        if self.seq <= seq:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        return Feed([e for e in self.feed if e.seq > seq], self.seq, self.info())

    # -- sessions ----------------------------------------------------------------------------

    async def open_session(self, lifetime: float) -> Reply:
        """A new session that ends itself (expires) after `lifetime` seconds if no gateway
        ended it (its gateway may be gone)."""
        if self.info().free <= 0:
            return Reply(error=_full(self.host.stats().capacity))
        try:
            hosted = await self.host.open_session()
        except TCIError as exc:
            return Reply(error=exc)
        return self._hold(hosted, lifetime)

    def _hold(self, hosted: HostedSession, lifetime: float) -> Reply:
        """A session just opened joins the table, to end itself after `lifetime` seconds."""
        session = HostSession(hosted.id, hosted, utcnow() + timedelta(seconds=lifetime))
        self.sessions.add(session)
        hosted.on_end(lambda reason: self.sessions.end_soon(session, reason))
        return Reply(hosted.id)

    async def open_saved(self, name: str, session_id: str | None, max_bytes: int,
                         lifetime: float) -> Reply:
        """A session started here from the state kept under `name` (LocalHost.open_saved):
        the paused session `session_id` itself, or a new one from a snapshot. The state may
        have been saved by any host: it is read from the shared TCI_STATE_DIR."""
        if self.info().free <= 0:
            return Reply(error=_full(self.host.stats().capacity))
        if not await asyncio.to_thread(self.host.states.has, name):
            return Reply(state_missing=True, state_problem=_missing(name, self.name))
        try:
            hosted = await self.host.open_saved(name, session_id, max_bytes)
        except StateNotRestored as exc:
            return Reply(state_problem=str(exc))
        except TCIError as exc:
            return Reply(error=exc)
        return self._hold(hosted, lifetime)

    async def save_state(self, sid: str, name: str, pause: bool, max_bytes: int) -> Reply:
        """Keep the session's state under `name` (HostedSession.save_state), answering the
        SavedState. Paused, it leaves the table without an end: no gateway is told that it
        ended, and calls that waited for it find it paused."""
        session = self.sessions.get(sid)
        if session is None:
            return self._gone(sid)
        async with session.lock:
            if session.ended is not None:
                return Reply(gone=session.ended)
            try:
                saved = await session.hosted.save_state(name, pause, max_bytes)
            except StateNotSaved as exc:
                return Reply(state_problem=str(exc))
            except SessionGone as gone:
                await self.sessions.end(session, gone.reason)
                return Reply(gone=gone.reason)
            if pause:
                session.ended = MOVED
                self.sessions.release(session)
                self._tell_feed(session.id, MOVED, None)
        return Reply(saved)

    async def delete_saved(self, name: str) -> Reply:
        """Free the state kept under `name`, whichever host kept it (the directory is shared)."""
        await self.host.delete_saved(name)
        return Reply()

    async def end(self, sid: str, reason: EndReason) -> Reply:
        """End the session now, even mid-call; answers its CPU seconds (None if it had
        ended already)."""
        session = self.sessions.get(sid)
        return Reply(None if session is None else await self.sessions.end(session, reason))

    async def _finish(self, session: HostSession, reason: EndReason) -> float | None:
        """Free what the session held and tell the gateways' feed."""
        used = await session.hosted.end(reason)
        self._tell_feed(session.id, reason, used)
        return used

    def _tell_feed(self, sid: str, reason: EndReason, used: float | None) -> None:
        self.seq += 1
        self.feed.append(Ended(self.seq, sid, reason, used))
        if self._changed is not None:
            self._changed.set()

    def _gone(self, sid: str) -> Reply:
        gone = self.sessions.gone(sid)
        return Reply(gone=UNKNOWN_SESSION if gone is None else gone.reason)

    async def execute(self, sid: str, cell: Cell, files: list[DecodedFile], timeout: float,
                      grace: float) -> Reply:
        return await self._execute(sid, cell, files, timeout, grace, None, None)

    async def run(self, sid: str, code: str, language: str, timeout: float,
                  grace: float) -> Reply | PlainResult:
        """`execute` without files, the warm call: plain values both ways. Ray packs strings,
        numbers, lists and dicts with msgpack, and pickles anything else (Cell, Reply,
        CallResult) with cloudpickle on one side and unpickles it on the other. A call that
        left its session alive answers [outputs, its EndKind's name]; any other a Reply."""
        reply = await self._execute(sid, Cell(code, language), [], timeout, grace, None, None)
        result = reply.value
        if isinstance(result, CallResult) and result.ended is None:
            return [result.outputs, result.end.name]
        return reply

    async def _execute(self, sid: str, cell: Cell, files: list[DecodedFile], timeout: float,
                       grace: float, listener: Any, on_start: Any) -> Reply:
        session = self.sessions.get(sid)
        if session is None:
            return self._gone(sid)
        async with session.lock:
            if session.ended is not None:  # while this call waited for the running one
                return Reply(gone=session.ended)
            try:
                result: CallResult = await session.hosted.execute(cell, files, timeout, grace,
                                                                  listener, on_start)
            except SessionGone as gone:
                return Reply(gone=gone.reason)
        return Reply(result)

    async def execute_stream(self, sid: str, cell: Cell, files: list[DecodedFile],
                             timeout: float, grace: float) -> AsyncIterator[tuple[str, Any]]:
        """("start", None) when the code starts, ("output", output) as each is produced,
        then ("reply", Reply): a Ray streaming generator, so outputs reach the gateway as
        they come. The reply's result names the outputs already sent instead of sending
        them again (tci/cluster/streamed.py)."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        sent: list[dict[str, Any]] = []

        def listener(output: dict[str, Any]) -> None:
            sent.append(output)
            queue.put_nowait(("output", output))

        call = asyncio.ensure_future(self._execute(
            sid, cell, files, timeout, grace, listener,
            lambda: queue.put_nowait(("start", None))))
        call.add_done_callback(lambda _: queue.put_nowait(("done", None)))
        try:
            while True:
                kind, item = await queue.get()
                if kind == "done":
                    yield ("reply", _outlined(call.result(), sent))
                    return
                yield (kind, item)
        finally:
            if not call.done():  # the gateway went away: stop the cell (the driver does)
                call.cancel()

    async def interrupt(self, sid: str) -> Reply:
        session = self.sessions.get(sid)
        return Reply(False) if session is None else Reply(await session.hosted.interrupt())

    async def list_files(self, sid: str) -> Reply:
        return await self._files(sid, "list_files")

    async def read_file(self, sid: str, path: str) -> Reply:
        return await self._files(sid, "read_file", path)

    async def write_files(self, sid: str, files: list[DecodedFile]) -> Reply:
        # Not under the session's lock, as on a single machine: a running cell may be
        # waiting for the very file being written.
        return await self._files(sid, "write_files", files)

    async def _files(self, sid: str, method: str, *args: Any) -> Reply:
        session = self.sessions.get(sid)
        if session is None:
            return self._gone(sid)
        try:
            return Reply(await getattr(session.hosted, method)(*args))
        except TCIError as exc:
            return Reply(error=exc)

    async def cpu_seconds(self, sid: str) -> float | None:
        session = self.sessions.get(sid)
        return None if session is None else await session.hosted.cpu_seconds()


def _outlined(reply: Reply, sent: list[dict[str, Any]]) -> Reply:
    """A streamed call's reply with the outputs the gateway already has named, not sent."""
    if not isinstance(reply.value, CallResult):
        return reply
    return replace(reply, value=OutlinedResult.of(reply.value, sent))


def _missing(name: str, host: str) -> str:
    return (f"its kept state {name} is not in TCI_STATE_DIR of tci host {host}: on a Ray "
            "cluster every host must mount the same shared directory there (NFS, a shared "
            "volume), or a state is seen only by the host that kept it")


def _full(limit: int) -> TCIError:
    return TooManySessions(f"this host runs its maximum of {limit} sessions (TCI_MAX_SESSIONS "
                           "of its node)")
