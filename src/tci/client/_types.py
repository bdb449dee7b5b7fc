"""Typed results (plain dataclasses: no dependency beyond the standard library)."""

from __future__ import annotations

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
    id: str
    execute_count: int
    started_at: datetime
    last_execute_at: datetime
    expires_at: datetime

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SessionInfo:
        return cls(
            id=raw["id"],
            execute_count=raw["execute_count"],
            started_at=datetime.fromisoformat(raw["started_at"]),
            last_execute_at=datetime.fromisoformat(raw["last_execute_at"]),
            expires_at=datetime.fromisoformat(raw["expires_at"]),
        )


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
