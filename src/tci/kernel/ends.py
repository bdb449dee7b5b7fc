"""How a call and a session end: one vocabulary, from the kernel driver up to the metrics.

`EndKind` names every end there is: of a call that leaves its session alive (OK, ERROR,
INTERRUPTED), of a worker that died and took its session with it, and of a session ended
from outside (expiry, the client, the server, the host). What each end is called elsewhere
is a property of its member, never a mapping kept in another module:

- `outcome`: the call's outcome as the execution log and `tci_executions_total` count it
  (a call cut short by the end of its session is "died");
- `label`: the reason `tci_sandboxes_killed_total` counts a session that ended this way
  (values older than this enum, which dashboards use); None for the ends of a call alone;
- `text`: what users read (410 bodies, the store's end_reason) when an end has no words of
  its own.

Plain data (enums, frozen dataclasses, strings), so that results cross to a Ray gateway.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["ok", "error", "timeout", "died"]


class EndKind(enum.Enum):
    """How a call or a session ended, as a value code branches on."""

    outcome: Outcome
    label: str | None
    text: str

    def __new__(cls, value: str, outcome: Outcome, label: str | None, text: str) -> EndKind:
        member = object.__new__(cls)
        member._value_ = value
        member.outcome = outcome
        member.label = label
        member.text = text
        return member

    # A call that leaves its session alive.
    OK = "ok", "ok", None, "the call completed"
    ERROR = "error", "error", None, "the code raised an exception"
    INTERRUPTED = ("interrupted", "timeout", None,
                   "execution timed out and was interrupted; the session is still alive")
    # A session's end (and a running call's, counted "died").
    EXPIRED = "expired", "died", "expired", "expired"
    # DELETE, the MCP tool, or exit()/quit() in the session's code
    CLIENT = "client", "died", "client", "ended by the client"
    SHUTDOWN = "shutdown", "died", "shutdown", "server shut down"
    # found live in the store by the next server
    RESTARTED = "restarted", "died", "shutdown", "server restarted"
    # the worker exited or was killed (signal, exit code)
    WORKER_DIED = "worker_died", "died", "worker_died", "the worker process ended"
    # killed by the kernel at TCI_MEMORY_LIMIT_BYTES
    OUT_OF_MEMORY = ("out_of_memory", "died", "memory_limit",
                     "the worker ran out of memory")
    # a timed-out cell ignored its interrupt and was killed
    TIMEOUT = ("timeout", "died", "timeout",
               "execution timed out and the worker was killed")
    # an abandoned cell ignored its interrupt and was killed (or its session's id was never
    # learned by anyone)
    CLIENT_GONE = ("client_gone", "died", "worker_died",
                   "its client went away and the worker was killed")
    # the worker broke the protocol and was killed
    PROTOCOL = "protocol", "died", "worker_died", "the worker broke the protocol"
    # the host running the session is gone
    HOST_LOST = "host_lost", "died", "host_lost", "host lost"

    @property
    def ends_session(self) -> bool:
        return self.label is not None


def kill_labels() -> tuple[str, ...]:
    """Every value `tci_sandboxes_killed_total`'s reason takes, each once, in member order."""
    return tuple(dict.fromkeys(kind.label for kind in EndKind if kind.label is not None))


@dataclass(frozen=True)
class EndReason:
    """Why a session ended: `kind` for code, `str()` for people (the host's own words, such
    as "the worker process was killed by SIGKILL", when it has them)."""

    kind: EndKind
    detail: str = ""

    def __post_init__(self) -> None:
        if not self.kind.ends_session:
            raise ValueError(f"{self.kind} ends a call, not a session")

    def __str__(self) -> str:
        return self.detail or self.kind.text

    @property
    def label(self) -> str:
        """The reason `tci_sandboxes_killed_total` counts it under."""
        assert self.kind.label is not None  # checked at construction
        return self.kind.label


# Like an ipykernel, which exits after replying to the cell that called exit(); a notebook
# server would then start a fresh kernel, but a new session is the client's to ask for.
EXITED = EndReason(EndKind.CLIENT, "the session exited (its code called exit() or quit())")


def death_notice(reason: EndReason) -> str:
    """The `error` output that tells the caller its call ended the session."""
    if reason.kind is EndKind.OUT_OF_MEMORY:  # its words are the MemoryError itself
        return str(reason)
    name = "TimeoutError" if reason.kind is EndKind.TIMEOUT else "WorkerDied"
    return f"{name}: {reason}; the session was ended."


@dataclass
class CallResult:
    """One execute call: its outputs (with the limits it ran into already added as `error`
    outputs), how it ended, and how its session ended if the call ended it."""

    outputs: list[dict[str, Any]]
    end: EndKind  # OK, ERROR, INTERRUPTED, or how the worker died
    ended: EndReason | None = None  # the worker died, or the code called exit()

    @property
    def outcome(self) -> Outcome:
        return self.end.outcome
