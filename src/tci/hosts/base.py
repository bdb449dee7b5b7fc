"""The contract between SessionManager and wherever its sessions run.

SessionManager keeps ownership, lifespan, locks and usage records; a SessionHost starts,
runs and ends the sessions themselves. Everything that crosses this line is plain data
(strings, numbers, dataclasses, enums) or a callback: no fds, pids, uids, cgroups or paths,
so that a host can live in another process or on another machine (a Ray actor) with the
same interface, the callbacks adapted by its proxy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# How calls and sessions end is the kernel's vocabulary, told across this line as it is.
from tci.kernel.ends import CallResult, EndKind, EndReason, Outcome
from tci.kernel.outputs import OutputSink
from tci.workspace import DecodedFile, FileListing

__all__ = ["CallResult", "EndKind", "EndReason", "Outcome"]  # re-exported for the hosts

# Told each output as it is produced (the kernel's sink, as a host's caller sees it).
OutputListener = OutputSink


EndListener = Callable[[EndReason], None]


@dataclass(frozen=True)
class Cell:
    """What one call runs: `code` in `language` (a language the session's worker speaks)."""

    code: str
    language: str = "python"


# Told (by on_end's listener, or as SessionGone's reason) by a handle that no longer reaches
# its session because another server paused it or resumed it elsewhere (a Ray cluster's
# gateways): the session has not ended. Its holder drops the handle without recording an
# end, and looks the session up anew (a paused one then resumes).
MOVED = EndReason(EndKind.CLIENT, "the session was paused or moved through another server")


class SessionGone(Exception):  # a state the caller handles, like StopIteration
    """The session's process ended before the call could start: `reason` says how."""

    def __init__(self, reason: EndReason) -> None:
        super().__init__(str(reason))
        self.reason = reason


@dataclass(frozen=True)
class SavedState:
    """A session's state kept in the host's state store (pause, snapshot): what could not
    be saved, by name and why, and the bytes it takes."""

    skipped: list[dict[str, str]]
    size_bytes: int


class StateNotSaved(Exception):
    """The session's state could not be saved (too large, the worker's error): says why, in
    words for the client. The session is left as it was."""


class StateNotRestored(Exception):
    """A kept state could not be restored in a new sandbox (corrupt, too large): says why,
    in words for the client. Nothing of the attempt is left running."""


@dataclass(frozen=True)
class HostStats:
    """What a host reports for /health and /metrics."""

    pool_ready: int  # warm sessions ready to be handed out
    pool_size: int  # how many it keeps warm (TCI_POOL_SIZE)
    starts_failed: int = 0  # warm starts that failed since the host started
    capacity: int = 0  # sessions it holds at once (TCI_MAX_SESSIONS, or what the machine holds)
    # What the host found at start that a setting cannot do here, e.g. {"io_weight": {...}}.
    details: dict[str, Any] = field(default_factory=dict)
    # Session languages and whether this host's sandboxes have their runtime (empty: a host
    # that does not say, such as a Ray gateway).
    languages: dict[str, bool] = field(default_factory=dict)


class HostedSession(ABC):
    """One live session on its host. Calls are serialized by the manager (its per-session
    lock), except `interrupt` and `cpu_seconds`, which must work while a call runs."""

    id: str  # unguessable; the session id clients see
    host: str | None = None  # the host's name in the store when other servers may route to it

    @abstractmethod
    async def execute(self, cell: Cell, files: list[DecodedFile], timeout: float, grace: float,
                      listener: OutputListener | None = None,
                      on_start: Callable[[], None] | None = None) -> CallResult:
        """Write `files`, then run the cell (told to `on_start` just before). A call past
        `timeout` is interrupted, and killed after `grace` more seconds. Raises SessionGone,
        running nothing, if the session's process had already ended."""

    @abstractmethod
    async def interrupt(self) -> bool:
        """Ctrl-C for the running call; False, with nothing sent, if no call runs."""

    @abstractmethod
    async def list_files(self) -> FileListing: ...

    @abstractmethod
    async def read_file(self, path: str) -> bytes: ...

    @abstractmethod
    async def write_files(self, files: list[DecodedFile]) -> None: ...

    @abstractmethod
    async def cpu_seconds(self) -> float | None:
        """CPU seconds used since the session was handed out (None if not measured)."""

    @abstractmethod
    def on_end(self, listener: EndListener) -> None:
        """Have `listener` told, once, if the session's process ends on its own while no
        call runs (a call that ends it says so in its CallResult instead). If it already
        ended, the listener is told soon after this returns."""

    @abstractmethod
    async def end(self, reason: EndReason) -> float | None:
        """Stop the session and free everything it held; returns the CPU seconds it used
        (read before its accounting is gone). Idempotent."""

    async def save_state(self, name: str, pause: bool, max_bytes: int) -> SavedState:
        """Keep the session's state under `name` in the host's state store. With `pause`, the
        session then ends as a pause does: every process gone, nothing of it left but the
        kept state. StateNotSaved (the session left as it was) or SessionGone."""
        raise StateNotSaved("this server's hosts cannot save a session's state")


@dataclass
class AdoptedSession:
    """A live session another server started, with what the manager must know of it."""

    session: HostedSession
    key_id: int
    started_at: datetime
    expires_at: datetime
    execute_count: int


class SessionHost(ABC):
    """Where sessions run: starts them (ahead of demand when it can) and reports on itself."""

    # True when sessions outlive this server (hosts on a Ray cluster): stopping the server
    # then leaves them running, for the other gateways and for this one when it comes back.
    keeps_sessions: bool = False

    async def adopt(self, session_id: str) -> AdoptedSession | None:
        """A live session started by another server on the same hosts, or None."""
        return None

    @abstractmethod
    async def start(self) -> None:
        """Make the host ready (directories, cgroups, the warm pool)."""

    @abstractmethod
    async def stop(self) -> None:
        """Release what start() made; called after every session has ended."""

    @abstractmethod
    async def open_session(self) -> HostedSession:
        """A fresh session, from the warm pool if one is ready, else started now. Raises
        SandboxUnavailable when the host cannot take one (start failed, disk nearly full)."""

    @abstractmethod
    def stats(self) -> HostStats: ...

    async def open_saved(self, name: str, session_id: str | None,
                         max_bytes: int) -> HostedSession:
        """A session started from the state kept under `name`: the paused session
        `session_id` itself (its state is then the session's own again), or, with None, a
        new session from a snapshot (which stays kept). StateNotRestored, SandboxUnavailable."""
        raise StateNotRestored("this server's hosts cannot restore a session's state")

    async def delete_saved(self, name: str) -> None:
        """Free the state kept under `name` (nothing if there is none)."""
        del name  # a host that keeps none has none to free

    @abstractmethod
    async def self_check(self) -> list[str]:
        """Start a probe session the way sessions start and return every protection found
        missing in it (empty: all in force)."""
