"""RayHost: the SessionHost of a gateway, whose sessions run on the cluster's host actors.

Placement: a new session goes to the host with the most free capacity, as each host last
said (every reply of its feed carries it, at least every TCI_RAY_FEED_SECONDS). Routing: a
session's host is its `host` in the store, so any gateway can reach any session (the one
that did not start it adopts it on first use). Failures: each gateway keeps one call
pending on each host (its feed of ended sessions); when Ray reports the host's actor dead
(ActorDiedError: its node lost), the host's sessions end with "host lost" and new ones go to
the others. A host Ray calls only unavailable (ActorUnavailableError, a call timed out) is
unreachable, not dead: its sessions are kept and their calls answer 503 with Retry-After.
Nothing here probes hosts: Ray's own health checks decide that a node is gone.

Paused sessions and snapshots: their state is kept in TCI_STATE_DIR, which every host mounts
from one shared directory, so a paused session resumes (and a snapshot starts a session) on
whichever host is placed as a new session would be, not only on the one that saved it. A host
that does not find the state there passes it to the next; the store's `host` of a resumed
session is its new host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError

from tci.cluster import actors
from tci.cluster.host_actor import (
    UNKNOWN_SESSION,
    Feed,
    HostInfo,
    PlainResult,
    Reply,
    short_gil_handoffs,
)
from tci.cluster.streamed import OutlinedResult
from tci.config import Settings
from tci.errors import (
    HostUnreachable,
    SandboxUnavailable,
    SessionEnded,
    TCIError,
    TooManySessions,
)
from tci.hosts.base import (
    MOVED,
    AdoptedSession,
    CallResult,
    Cell,
    EndKind,
    EndListener,
    EndReason,
    HostedSession,
    HostStats,
    OutputListener,
    SavedState,
    SessionGone,
    SessionHost,
    StateNotRestored,
    StateNotSaved,
)
from tci.storage.store import AsyncStore
from tci.workspace import DecodedFile, FileListing

log = logging.getLogger(__name__)
HOST_LOST = EndReason(EndKind.HOST_LOST)
# What a call to a host can fail with from Ray: its actor dead or unavailable (RayActorError),
# or no answer in time (GetTimeoutError and asyncio's are both TimeoutError).
HOST_FAILURES = (RayActorError, TimeoutError)
# How long a host's feed waits before asking again after Ray called the host unavailable.
UNREACHABLE_RETRY_SECONDS = 1.0


def _died(exc: BaseException) -> bool:
    """Whether Ray says the host's actor is dead (ActorDiedError: its node was lost, or it
    exited), the only failure that ends its sessions. ActorUnavailableError (Ray cannot
    reach it now but has not declared it dead), a bare RayActorError and timeouts are not."""
    return isinstance(exc, ActorDiedError)


def _failure(exc: BaseException, host: str) -> Exception:
    """What a failed call to `host` means for the session: gone with its host, or kept and
    to be retried (503 with Retry-After)."""
    if _died(exc):
        return SessionGone(HOST_LOST)
    return HostUnreachable(f"tci host {host} cannot be reached now: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _unwrap(reply: Reply) -> Any:
    if reply.gone is not None:
        raise SessionGone(reply.gone)
    if reply.error is not None:
        raise reply.error
    return reply.value


def _call_result(answer: Reply | PlainResult) -> CallResult:
    """A call's result from `HostActor.run`'s plain answer, or `execute`'s Reply."""
    if isinstance(answer, Reply):
        result: CallResult = _unwrap(answer)
        return result
    outputs, end = answer
    return CallResult(outputs, EndKind[end])


@dataclass
class _Host:
    """What a gateway knows of one host actor."""

    name: str
    actor: Any
    info: HostInfo
    seq: int = 0  # the last end of its feed this gateway has seen
    placed: int = 0  # sessions this gateway placed there: breaks ties between equal hosts
    sessions: dict[str, RaySession] = field(default_factory=dict)  # those this gateway holds
    watcher: asyncio.Task[None] | None = None


# Whether a session its host does not know has moved (RayHost._moved): (id, host name).
MovedCheck = Callable[[str, str], Awaitable[bool]]


class RaySession(HostedSession):
    def __init__(self, entry: _Host, session_id: str, moved: MovedCheck) -> None:
        self.id = session_id
        self.host = entry.name
        self._entry = entry
        self._moved = moved
        self._listener: EndListener | None = None
        self._gone: EndReason | None = None
        self._cpu_at_end: float | None = None  # as its host measured it, if it ended there

    async def _told(self, gone: SessionGone) -> SessionGone:
        """`gone` as the manager should hear it: MOVED (told to its listener too, so the
        manager drops this handle) when the host does not know the session because another
        gateway paused it or resumed it on another host; else as it came."""
        if gone.reason == UNKNOWN_SESSION and await self._moved(self.id, self._entry.name):
            self._entry.sessions.pop(self.id, None)
            self._tell(MOVED)
            return SessionGone(MOVED)
        return gone

    async def _call(self, method: str, *args: Any) -> Any:
        if self._gone is not None:
            raise SessionGone(self._gone)
        try:
            reply = await getattr(self._entry.actor, method).remote(self.id, *args)
        except HOST_FAILURES as exc:
            raise _failure(exc, self._entry.name) from None
        try:
            return _unwrap(reply)
        except SessionGone as gone:
            raise await self._told(gone) from None

    async def execute(self, cell: Cell, files: list[DecodedFile], timeout: float, grace: float,
                      listener: OutputListener | None = None,
                      on_start: Callable[[], None] | None = None) -> CallResult:
        try:
            return await self._run_cell(cell, files, timeout, grace, listener, on_start)
        except SessionGone as gone:
            raise await self._told(gone) from None

    async def _run_cell(self, cell: Cell, files: list[DecodedFile], timeout: float,
                        grace: float, listener: OutputListener | None,
                        on_start: Callable[[], None] | None) -> CallResult:
        if listener is None:  # one round trip
            if self._gone is not None:
                raise SessionGone(self._gone)
            if on_start is not None:
                on_start()
            actor = self._entry.actor
            call = actor.execute.remote(self.id, cell, files, timeout, grace) if files else \
                actor.run.remote(self.id, cell.code, cell.language, timeout, grace)
            try:
                return _call_result(await call)
            except HOST_FAILURES as exc:
                raise _failure(exc, self._entry.name) from None
            except asyncio.CancelledError:  # the client went away: the host interrupts the
                ray.cancel(call)  # cell, as a single machine does (kernel/driver.py)
                raise
        if self._gone is not None:
            raise SessionGone(self._gone)
        stream = self._entry.actor.execute_stream.options(num_returns="streaming").remote(
            self.id, cell, files, timeout, grace)
        received: list[dict[str, Any]] = []  # the result names these instead of resending
        try:
            async for ref in stream:
                kind, item = await ref
                if kind == "start" and on_start is not None:
                    on_start()
                elif kind == "output":
                    received.append(item)
                    listener(item)
                elif kind == "reply":
                    outlined: OutlinedResult = _unwrap(item)
                    return outlined.result(received)
        except HOST_FAILURES as exc:
            raise _failure(exc, self._entry.name) from None
        except asyncio.CancelledError:
            ray.cancel(stream)  # the host's generator stops the cell (its driver interrupts)
            raise
        raise SessionGone(HOST_LOST)  # the stream ended without its reply

    async def interrupt(self) -> bool:
        try:
            return bool(await self._call("interrupt"))
        except (SessionGone, HostUnreachable):
            return False

    async def _files(self, method: str, *args: Any) -> Any:
        try:
            return await self._call(method, *args)
        except SessionGone as gone:
            if gone.reason == MOVED:  # dropped by the manager now: found anew on a retry
                raise HostUnreachable(f"session {self.id} was paused or moved through "
                                      "another gateway") from None
            raise SessionEnded(f"session {self.id} has ended: {gone.reason}") from None

    async def list_files(self) -> FileListing:
        listing: FileListing = await self._files("list_files")
        return listing

    async def read_file(self, path: str) -> bytes:
        content: bytes = await self._files("read_file", path)
        return content

    async def write_files(self, files: list[DecodedFile]) -> None:
        await self._files("write_files", files)

    async def save_state(self, name: str, pause: bool, max_bytes: int) -> SavedState:
        """Its host keeps the state in the shared TCI_STATE_DIR; paused, the session is no
        longer this host's (it resumes wherever it is placed next)."""
        if self._gone is not None:
            raise SessionGone(self._gone)
        try:
            reply: Reply = await self._entry.actor.save_state.remote(self.id, name, pause,
                                                                    max_bytes)
        except HOST_FAILURES as exc:
            raise _failure(exc, self._entry.name) from None
        if reply.state_problem is not None:
            raise StateNotSaved(reply.state_problem)
        saved: SavedState = _unwrap(reply)
        if pause:
            self._entry.sessions.pop(self.id, None)
            self._listener = None
        return saved

    async def cpu_seconds(self) -> float | None:
        try:
            used: float | None = await self._entry.actor.cpu_seconds.remote(self.id)
        except HOST_FAILURES:
            return None
        return used

    def on_end(self, listener: EndListener) -> None:
        self._listener = listener
        if self._gone is not None:
            asyncio.get_running_loop().call_soon(self._tell, self._gone)

    def _tell(self, reason: EndReason, cpu_seconds: float | None = None) -> None:
        """Its host says it ended (or Ray says the host is gone): tell the manager once."""
        self._gone = self._gone or reason
        self._cpu_at_end = cpu_seconds if cpu_seconds is not None else self._cpu_at_end
        listener, self._listener = self._listener, None
        if listener is not None:
            listener(self._gone)

    async def end(self, reason: EndReason) -> float | None:
        self._entry.sessions.pop(self.id, None)
        self._listener = None
        if self._gone is not None and self._gone.kind is EndKind.HOST_LOST:
            return None
        try:
            reply = await self._entry.actor.end.remote(self.id, reason)
        except HOST_FAILURES as exc:  # unreachable: the host ends it when it expires there
            log.warning("tci host %s did not take the end of session %s: %s", self._entry.name,
                        self.id, _first_line(exc))
            return None
        return reply.value if reply.value is not None else self._cpu_at_end


class RayHost(SessionHost):
    keeps_sessions = True  # they live on the hosts, for every gateway

    def __init__(self, settings: Settings, store: AsyncStore) -> None:
        short_gil_handoffs()
        self.settings = settings
        self.store = store  # the manager's: one way into the database per process
        self.hosts: dict[str, _Host] = {}
        self._starting: set[str] = set()
        self._discovery: asyncio.Task[None] | None = None
        self.lost: dict[str, float] = {}  # host name -> when Ray reported it lost (monotonic)

    # -- the cluster -------------------------------------------------------------------------

    async def start(self) -> None:
        if not ray.is_initialized():
            ray.init(address=self.settings.ray_address, namespace=self.settings.ray_namespace,
                     logging_level=logging.WARNING, log_to_driver=False)
        await self.discover()
        if not self.hosts:
            log.warning("no tci host is up yet (no node offers %s); new sessions wait for one",
                        actors.RESOURCE)
        # Sessions of hosts that went while no gateway watched them: they are lost. Those of
        # live hosts stay live (a restarting gateway never ends them).
        recorded = await self.store.live_hosts()
        unknown = {name for name in recorded if name is not None and name not in self.hosts}
        for name in unknown:
            if await self._dead(name):  # not merely slow to start, or not yet reached
                await self._record_lost(name)
        self._discovery = asyncio.create_task(self._discover_forever(), name="tci-ray-discovery")

    async def stop(self) -> None:
        """The gateway stops: its watchers and discovery end; the hosts and their sessions
        go on for the other gateways (and for this one when it comes back)."""
        tasks = [self._discovery] if self._discovery is not None else []
        tasks += [h.watcher for h in self.hosts.values() if h.watcher is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _discover_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ray_discover_seconds)
            try:
                await self.discover()
            except Exception:  # a GCS hiccup must not stop discovery for good
                log.exception("looking for tci hosts failed; trying again")

    async def discover(self) -> None:
        """Start (or find) the host actor of every tci_host node not yet known, and wait
        for them to be ready."""
        nodes = await asyncio.to_thread(actors.host_nodes)
        new = {name: node for name, node in nodes.items()
               if name not in self.hosts and name not in self._starting}
        await asyncio.gather(*(self._add(name, node) for name, node in new.items()))

    async def _add(self, name: str, node_id: str) -> None:
        self._starting.add(name)
        try:
            actor = actors.host_actor(node_id, self.settings.ray_namespace)
            reply = await asyncio.wait_for(actor.start.remote(),
                                           self.settings.ray_host_start_timeout)
            info: HostInfo = _unwrap(reply)
        except (RayActorError, TimeoutError, TCIError) as exc:
            log.error("tci host %s did not start: %s", name, getattr(exc, "message", exc))
            return
        finally:
            self._starting.discard(name)
        entry = _Host(name, actor, info, info.seq)
        self.hosts[name] = entry
        entry.watcher = asyncio.create_task(self._watch(entry), name=f"tci-watch-{name}")
        log.info("tci host %s joined (%d free)", name, info.free)

    async def _watch(self, entry: _Host) -> None:
        while True:
            try:
                feed: Feed = await entry.actor.ended_since.remote(
                    entry.seq, self.settings.ray_feed_seconds)
            except HOST_FAILURES as exc:
                if _died(exc):
                    await self._lose(entry, exc)
                    return
                # Unreachable for now (Ray has not said dead): its sessions are kept; ask
                # again, and Ray says "died" if the node is in fact gone.
                log.warning("tci host %s unreachable: %s", entry.name, _first_line(exc))
                await asyncio.sleep(UNREACHABLE_RETRY_SECONDS)
                continue
            entry.info, entry.seq = feed.info, feed.last
            for ended in feed.ended:
                session = entry.sessions.pop(ended.session_id, None)
                if session is not None:
                    session._tell(ended.reason, ended.cpu_seconds)
                elif ended.reason == MOVED:  # paused, not ended: its record says so
                    continue
                else:  # ended on the host (expired, its worker died) or through another
                    # gateway; the first write wins, so this is a no-op when it is recorded
                    self.store.end_session_later(ended.session_id, str(ended.reason),
                                                 ended.cpu_seconds)

    async def _lose(self, entry: _Host, exc: BaseException) -> None:
        log.error("tci host %s lost: %s", entry.name, _first_line(exc))
        self.lost[entry.name] = time.monotonic()
        self.hosts.pop(entry.name, None)
        for session in list(entry.sessions.values()):
            session._tell(HOST_LOST)
        await self._record_lost(entry.name)

    async def _dead(self, name: str) -> bool:
        """Whether Ray says the host `name` is gone: reported lost to this gateway, or its
        node dead or unknown to the cluster. A host whose node lives but that this gateway
        has not reached (not yet discovered, its actor slow to start) is not."""
        if name in self.lost:
            return True
        nodes = await asyncio.to_thread(ray.nodes)
        return name not in {actors.host_name(node["NodeID"]) for node in nodes if node["Alive"]}

    async def _record_lost(self, name: str) -> None:
        with contextlib.suppress(TCIError):  # the database down: the next gateway does it
            ended = await self.store.end_live(str(HOST_LOST), name)
            if ended:
                log.info("%d sessions of lost host %s marked ended", ended, name)

    # -- sessions ----------------------------------------------------------------------------

    async def open_session(self) -> RaySession:
        """On the host with the most free capacity; the next one if it refuses."""
        refusals: list[str] = []
        for entry in self._placement():
            if entry.info.free <= 0:
                refusals.append(f"{entry.name} is full")
                continue
            try:
                reply = await entry.actor.open_session.remote(
                    self.settings.session_lifetime_seconds)
            except HOST_FAILURES as exc:
                if _died(exc):
                    await self._lose(entry, exc)
                else:
                    refusals.append(f"{entry.name} is unreachable")
                continue
            if reply.error is not None:
                refusals.append(f"{entry.name}: {reply.error.message}")
                log.warning("tci host %s refused a session: %s", entry.name,
                            reply.error.message)
                continue
            return self._placed(entry, reply.value)
        raise _none_could("take a new session", refusals)

    def _placement(self) -> list[_Host]:
        """Hosts in the order a new session tries them: most free first, then the one this
        gateway placed fewest on."""
        return sorted(self.hosts.values(), key=lambda h: (-h.info.free, h.placed))

    async def open_saved(self, name: str, session_id: str | None,
                         max_bytes: int) -> RaySession:
        """On the host a new session would go to, whichever host saved the state; the next
        host if it refuses or does not find the state (TCI_STATE_DIR not shared)."""
        refusals: list[str] = []
        missing: str | None = None
        for entry in self._placement():
            if entry.info.free <= 0:
                refusals.append(f"{entry.name} is full")
                continue
            try:
                reply: Reply = await entry.actor.open_saved.remote(
                    name, session_id, max_bytes, self.settings.session_lifetime_seconds)
            except HOST_FAILURES as exc:
                refusals.append(await self._refused_by_failure(entry, exc))
                continue
            if reply.state_missing:
                missing = reply.state_problem
                log.warning("tci host %s: %s", entry.name, missing)
                continue
            if reply.state_problem is not None:  # corrupt or too large: so on every host
                raise StateNotRestored(reply.state_problem)
            if reply.error is not None:
                refusals.append(f"{entry.name}: {reply.error.message}")
                continue
            return self._placed(entry, reply.value)
        if missing is not None and not refusals:  # every host looked and none has it
            raise StateNotRestored(missing)
        if missing is not None:  # one that could not take it now may have it
            refusals.append(missing)
        raise _none_could("start a session from a kept state", refusals)

    async def delete_saved(self, name: str) -> None:
        """Any host frees it (TCI_STATE_DIR is shared); with none reachable it stays."""
        for entry in self._placement():
            try:
                await entry.actor.delete_saved.remote(name)
            except HOST_FAILURES as exc:
                await self._refused_by_failure(entry, exc)
                continue
            return
        log.warning("kept state %s not freed: no tci host is reachable", name)

    async def _refused_by_failure(self, entry: _Host, exc: BaseException) -> str:
        """A call to `entry` failed: the host is lost if Ray says it died. Says why."""
        if _died(exc):
            await self._lose(entry, exc)
            return f"{entry.name} is lost"
        return f"{entry.name} is unreachable"

    def _placed(self, entry: _Host, session_id: str) -> RaySession:
        entry.info = _taken(entry.info)  # until its feed says again
        entry.placed += 1
        session = RaySession(entry, session_id, self._moved)
        entry.sessions[session.id] = session
        return session

    async def adopt(self, session_id: str) -> AdoptedSession | None:
        """A live session that another gateway started, from its record in the store (the
        manager has checked that the caller owns it). HostUnreachable if its host is alive
        but not reached from here; None, with its host's sessions ended, if Ray says it is
        gone."""
        row = await self.store.session_row(session_id)
        if row is None or row["ended_at"] is not None or row["host"] is None:
            return None
        if row["paused_at"] is not None:  # on no host now: the manager resumes it
            return None
        entry = self.hosts.get(row["host"])
        if entry is None:
            if await self._dead(row["host"]):  # gone: say so, as its other sessions do
                await self._record_lost(row["host"])
                return None
            raise HostUnreachable(f"tci host {row['host']} of session {session_id} is "
                                  "alive but not reached from this gateway")
        session = entry.sessions.get(session_id) or RaySession(entry, session_id, self._moved)
        entry.sessions[session_id] = session
        return AdoptedSession(session, row["key_id"], row["started_at"], row["expires_at"],
                              row["execute_count"])

    async def _moved(self, session_id: str, host: str) -> bool:
        """Whether the session that `host` does not know lives on elsewhere: paused (through
        another gateway) or running on another host, as its record says."""
        try:
            row = await self.store.session_row(session_id)
        except TCIError:  # the database down: not known to have moved
            return False
        return row is not None and row["ended_at"] is None and (
            row["paused_at"] is not None or row["host"] != host)

    def stats(self) -> HostStats:
        infos = [h.info for h in self.hosts.values()]
        return HostStats(sum(i.pool_ready for i in infos), sum(i.pool_size for i in infos),
                         sum(i.starts_failed for i in infos), sum(i.capacity for i in infos))

    async def self_check(self) -> list[str]:
        """Each host checks itself when it starts; one whose check fails is not used."""
        return []


def _none_could(what: str, refusals: list[str]) -> TCIError:
    """No host would `what`: every one full is a 429 with Retry-After, as a single machine
    at TCI_MAX_SESSIONS answers (the client should wait); anything else a 503."""
    if refusals and all(refusal.endswith(" is full") for refusal in refusals):
        return TooManySessions(f"every tci host is running its maximum of sessions "
                               f"({'; '.join(refusals)}): retry shortly or end a session")
    return SandboxUnavailable(f"no tci host can {what} now"
                              + (f" ({'; '.join(refusals)})" if refusals else " (none is up)"))


def _taken(info: HostInfo) -> HostInfo:
    from dataclasses import replace

    return replace(info, free=max(0, info.free - 1), live=info.live + 1)
