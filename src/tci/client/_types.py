"""Typed results (plain dataclasses: no dependency beyond the standard library)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

OutputType = Literal["stdout", "stderr", "error", "display_data", "execute_result"]


@dataclass(frozen=True)
class Output:
    """One output of a call: ``data`` is text for stdout/stderr/error, a mime bundle
    (``{"text/plain": ..., "image/png": <base64>}``) for display_data/execute_result."""

    type: OutputType
    data: str | dict[str, Any]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Output:
        return cls(type=raw["type"], data=raw["data"])


@dataclass(frozen=True)
class ExecuteResult:
    """The answer to one execute call."""

    session_id: str
    status: str
    outputs: list[Output] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecuteResult:
        return cls(
            session_id=data["session_id"],
            status=data.get("status", "completed"),
            outputs=[Output.from_json(o) for o in data.get("outputs") or []],
        )

    def _text(self, kind: str) -> str:
        return "".join(o.data for o in self.outputs if o.type == kind and isinstance(o.data, str))

    @property
    def stdout(self) -> str:
        """All stdout text, concatenated."""
        return self._text("stdout")

    @property
    def stderr(self) -> str:
        """All stderr text, concatenated."""
        return self._text("stderr")

    @property
    def errors(self) -> list[str]:
        """The ``error`` outputs (tracebacks, timeouts, a dead worker), in order."""
        return [o.data for o in self.outputs if o.type == "error" and isinstance(o.data, str)]


@dataclass(frozen=True)
class SessionInfo:
    """A session as listed. ``status`` is "running" or "paused"; a paused one also has
    ``paused_at`` and ``state_bytes`` (what its kept state takes), and its ``expires_at`` is
    as if it resumed now (its lifetime clock stops while paused)."""

    id: str
    execute_count: int
    started_at: datetime
    last_execute_at: datetime
    expires_at: datetime
    status: str = "running"
    paused_at: datetime | None = None
    state_bytes: int | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SessionInfo:
        paused_at = raw.get("paused_at")
        return cls(
            id=raw["id"],
            execute_count=raw["execute_count"],
            started_at=datetime.fromisoformat(raw["started_at"]),
            last_execute_at=datetime.fromisoformat(raw["last_execute_at"]),
            expires_at=datetime.fromisoformat(raw["expires_at"]),
            status=raw.get("status", "running"),  # a server without pause sends none
            paused_at=None if paused_at is None else datetime.fromisoformat(paused_at),
            state_bytes=raw.get("state_bytes"),
        )


# -- pause, resume and snapshots -------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """A name of the session's namespace that could not be kept (a socket, a thread, a
    generator, ...), and why. Everything else was kept."""

    name: str
    reason: str

    @classmethod
    def many(cls, raw: Iterable[dict[str, Any]] | None) -> list[Skipped]:
        return [cls(name=item["name"], reason=item["reason"]) for item in raw or []]


@dataclass(frozen=True)
class PausedSession:
    """The answer to a pause: the session's processes are gone, its state is kept; any
    later call on ``id`` (or ``sessions.resume``) resumes it."""

    id: str
    status: str
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PausedSession:
        return cls(id=raw["id"], status=raw["status"], skipped=Skipped.many(raw.get("skipped")))


@dataclass(frozen=True)
class ResumedSession:
    """The answer to a resume: the session runs again under the same ``id``."""

    id: str
    status: str

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ResumedSession:
        return cls(id=raw["id"], status=raw["status"])


@dataclass(frozen=True)
class Snapshot:
    """A session's state kept under ``id`` ("snap_..."): execute with ``snapshot_id=id``
    starts a new session from it."""

    id: str
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Snapshot:
        return cls(id=raw["id"], skipped=Skipped.many(raw.get("skipped")))


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as listed: the session it was taken from, when, and what it takes."""

    id: str
    session_id: str
    created_at: datetime
    size_bytes: int

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SnapshotInfo:
        return cls(id=raw["id"], session_id=raw["session_id"],
                   created_at=datetime.fromisoformat(raw["created_at"]),
                   size_bytes=raw["size_bytes"])


@dataclass(frozen=True)
class FileInfo:
    """A regular file in a session's working directory (``path`` relative to it)."""

    path: str
    size: int
    modified: datetime

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FileInfo:
        return cls(path=raw["path"], size=raw["size"],
                   modified=datetime.fromisoformat(raw["modified"]))


@dataclass(frozen=True)
class WrittenFile:
    path: str
    size: int


@dataclass(frozen=True)
class OutputEvent:
    """A streamed output, sent as soon as the code produced it."""

    output: Output

    @property
    def type(self) -> str:
        return self.output.type

    @property
    def data(self) -> str | dict[str, Any]:
        return self.output.data


@dataclass(frozen=True)
class ResultEvent:
    """The last event of a stream: the whole response, as ``execute`` returns it."""

    result: ExecuteResult


StreamEvent = OutputEvent | ResultEvent


# -- one-shot runs (POST /v1/tci/batch) ------------------------------------------------------

Verdict = Literal["OK", "WRONG_ANSWER", "TIME_LIMIT", "MEMORY_LIMIT", "RUNTIME_ERROR",
                  "COMPILE_ERROR", "SANDBOX_ERROR"]


@dataclass(frozen=True)
class Run:
    """One program for ``client.runs``: run as a script in a fresh sandbox of its own, fed
    ``stdin``. ``files`` (a list of {"name", "encoding", "content"} or a {name: str | bytes}
    mapping) are written first, relative names under /workspace; unset limits take the
    server's TCI_RUN_* defaults. With ``expected_stdout`` the verdict compares stdout to it
    (trailing whitespace ignored); ``fetch_files`` are brought back in RunResult.files. A
    plain dict of the wire's fields is accepted wherever a Run is."""

    code: str
    language: str = "python"
    stdin: str = ""
    files: Iterable[Mapping[str, Any]] | Mapping[str, str | bytes] | None = None
    timeout: float | None = None
    memory_mb: int | None = None
    compile_timeout: float | None = None
    expected_stdout: str | None = None
    fetch_files: Sequence[str] = ()


@dataclass(frozen=True)
class RunResult:
    """The outcome of one Run. ``index`` is the run's position in the caller's input (across
    every request the runs were split into). ``verdict`` is the judgement, never an
    exception: a program that crashed is RUNTIME_ERROR, one the sandbox failed is
    SANDBOX_ERROR. ``exit_code`` is None when the run was killed (time or memory limit).
    ``files`` holds the fetched files that existed (None when the run asked none)."""

    index: int
    verdict: Verdict
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False
    files: dict[str, bytes] | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "OK"

    @classmethod
    def from_json(cls, raw: dict[str, Any], index: int) -> RunResult:
        files = raw.get("files")
        return cls(
            index=index, verdict=raw["verdict"], exit_code=raw["exit_code"],
            stdout=raw["stdout"], stderr=raw["stderr"], wall_s=raw["wall_s"],
            truncated=raw.get("truncated", False),
            files=None if files is None else {name: base64.b64decode(content)
                                              for name, content in files.items()},
        )

    def to_json(self) -> dict[str, Any]:
        """The wire's shape (files base64), with this result's own ``index``."""
        line: dict[str, Any] = {
            "index": self.index, "verdict": self.verdict, "exit_code": self.exit_code,
            "stdout": self.stdout, "stderr": self.stderr, "wall_s": self.wall_s,
            "truncated": self.truncated}
        if self.files is not None:
            line["files"] = {name: base64.b64encode(content).decode()
                             for name, content in self.files.items()}
        return line
