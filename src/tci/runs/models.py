"""The wire models of `POST /v1/tci/batch` and the runner's own plain values."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from tci.runs.languages import RUN_LANGUAGES, Commands
from tci.runs.verdicts import Verdict
from tci.schemas import FileInput, Text

__all__ = ["RUN_LANGUAGES", "BatchRequest", "RunFile", "RunRequest", "RunResult", "RunSpec"]


class RunRequest(BaseModel):
    """One run of a batch. Unset limits take the server's defaults (TCI_RUN_*)."""

    model_config = ConfigDict(extra="forbid")

    code: Text
    language: str = "python"
    stdin: Text | None = ""
    files: list[FileInput] = Field(default_factory=list)
    timeout: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    compile_timeout: float | None = Field(default=None, gt=0)
    expected_stdout: Text | None = None
    fetch_files: list[Text] = Field(default_factory=list)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: list[RunRequest]


@dataclass(frozen=True)
class RunFile:
    """A file of a run, its path inside the sandbox (absolute, under /workspace or /tmp)."""

    path: str
    content: bytes


@dataclass(frozen=True)
class RunSpec:
    """One run as the runner takes it: checked, decoded, limits resolved."""

    code: str
    language: str
    stdin: bytes
    files: tuple[RunFile, ...]
    timeout: float
    memory_bytes: int
    # Files to bring back: (the name the request used, its absolute path in the sandbox).
    fetch: tuple[tuple[str, str], ...] = ()
    expected_stdout: str | None = None
    # A language other than Python: what the sandbox compiles and runs (runs/languages.py).
    commands: Commands | None = None
    compile_timeout: float = 10.0
    # Why this host cannot run it (its language's toolchain is missing): its line says so.
    unavailable: str = ""


@dataclass
class RunResult:
    verdict: Verdict
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False  # stdout or stderr was cut at TCI_RUN_MAX_OUTPUT_BYTES
    timed_out: bool = False
    files: dict[str, bytes] = field(default_factory=dict)  # by the name the request used
    # SANDBOX_ERROR only: what failed (for the log and SandboxFusion's `message`).
    message: str = ""
    # Seconds per phase (queue, start, program, finish), for /metrics.
    phases: dict[str, float] = field(default_factory=dict)
    # A compiled language's compile, as SandboxFusion's compile_result shows it (None for
    # the others); `compiled`: this run ran the compiler (False: its build was kept from an
    # earlier run of the same program).
    compile: dict[str, object] | None = None
    compiled: bool = False
    language: str = "python"

    def line(self, index: int, with_files: bool = False) -> dict[str, object]:
        """The NDJSON line of /v1/tci/batch (`files`, base64, only if the run asked any)."""
        line: dict[str, object] = {
            "index": index, "verdict": self.verdict.value, "exit_code": self.exit_code,
            "stdout": self.stdout, "stderr": self.stderr, "wall_s": round(self.wall_s, 4),
            "truncated": self.truncated}
        if with_files:
            line["files"] = {path: base64.b64encode(content).decode()
                             for path, content in self.files.items()}
        return line
