"""SandboxFusion's API (bytedance/SandboxFusion, `sandbox/server/sandbox_api.py`) over tci's
runs and sessions, so its official client and verl's reward client work unchanged.

Its rules, as its clients depend on them: `SandboxError` only when the system failed (its
client retries that five times); a non-zero exit, a timeout or a compile failure is `Failed`;
`return_code` is null after a timeout; `message` is always a string; unknown request fields
are ignored.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tci.errors import BadRequest
from tci.runs.languages import NAMES
from tci.runs.models import RunResult
from tci.runs.verdicts import Verdict
from tci.schemas import FileInput

# SandboxFusion's names (and the usual aliases) -> tci's (runs/languages.py).
LANGUAGE_NAMES = {name: language.name for name, language in NAMES.items()}


class RunCodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    compile_timeout: float = 10
    run_timeout: float = 10
    memory_limit_MB: int = -1
    code: str
    stdin: str | None = None
    language: str
    files: dict[str, str | None] = Field(default_factory=dict)
    fetch_files: list[str] = Field(default_factory=list)


class RunJupyterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cells: list[str]
    cell_timeout: float = 0
    total_timeout: float = 45
    memory_limit_MB: int = -1
    kernel: str = "python3"
    files: dict[str, str | None] = Field(default_factory=dict)
    fetch_files: list[str] = Field(default_factory=list)


class CommandStatus(StrEnum):
    Finished = "Finished"
    Error = "Error"
    TimeLimitExceeded = "TimeLimitExceeded"


class RunStatus(StrEnum):
    Success = "Success"
    Failed = "Failed"
    SandboxError = "SandboxError"


def tci_language(name: str, available: dict[str, bool]) -> str:
    """tci's name of a SandboxFusion language; a 400 naming those offered (with their
    aliases) when this server does not offer it (unknown, or its toolchain is missing)."""
    language = LANGUAGE_NAMES.get(name)
    if language is None or not available.get(language):
        offered = ", ".join(sorted(alias for alias, tci in LANGUAGE_NAMES.items()
                                   if available.get(tci)))
        raise BadRequest(f"language {name!r} is not offered by this server; it offers: {offered}")
    return language


def file_inputs(files: dict[str, str | None]) -> list[FileInput]:
    """SandboxFusion's {path: base64 or null} as tci's files (null: an empty file)."""
    inputs = []
    for name, content in files.items():
        if content:
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"file {name!r} is not valid base64") from None
        inputs.append(FileInput(name=name, encoding="base64", content=content or ""))
    return inputs


def memory_mb(value: int) -> int | None:
    """-1 (or any value below 1): the server's default."""
    return value if value > 0 else None


def command_result(result: RunResult) -> dict[str, Any] | None:
    if result.verdict is Verdict.SANDBOX_ERROR:
        return None
    if result.timed_out:
        status, code = CommandStatus.TimeLimitExceeded, None
    else:
        status = CommandStatus.Finished
        # Killed by a signal (the memory limit's, a crash): as a subprocess reports it.
        code = result.exit_code if result.exit_code is not None else -9
    return {"status": status.value, "execution_time": round(result.wall_s, 4),
            "return_code": code, "stdout": result.stdout, "stderr": result.stderr}


def compile_result(result: RunResult) -> dict[str, Any] | None:
    """A compiled language's compile as SandboxFusion shows it (null for the others)."""
    if result.compile is None or result.verdict is Verdict.SANDBOX_ERROR:
        return None
    said = result.compile
    return {"status": str(said.get("status", CommandStatus.Finished.value)),
            "execution_time": said.get("execution_time"),
            "return_code": said.get("return_code"),
            "stdout": str(said.get("stdout") or ""), "stderr": str(said.get("stderr") or "")}


def run_code_response(result: RunResult, fetched: dict[str, bytes]) -> dict[str, Any]:
    if result.verdict is Verdict.SANDBOX_ERROR:
        status, message = RunStatus.SandboxError, result.message or "the sandbox failed"
    elif result.timed_out or result.exit_code != 0:
        status, message = RunStatus.Failed, ""
    else:
        status, message = RunStatus.Success, ""
    files = {path: base64.b64encode(content).decode() for path, content in fetched.items()}
    # A failed compile: no run at all (SandboxFusion's run_result is null then).
    run = None if result.verdict is Verdict.COMPILE_ERROR else command_result(result)
    return {"status": status.value, "message": message,
            "compile_result": compile_result(result), "run_result": run,
            "executor_pod_name": None, "files": files}


def error_fields(text: str) -> dict[str, Any]:
    """tci's error text (a traceback ending in `Name: value`) as Jupyter's error fields."""
    lines = text.rstrip("\n").split("\n")
    last = lines[-1] if lines else ""
    name, _, value = last.partition(":")
    name = name.strip() if name.strip().isidentifier() or "." in name else "Error"
    return {"ename": name, "evalue": value.strip(), "traceback": lines}


def cell_result(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    cell: dict[str, Any] = {"stdout": "", "stderr": "", "display": [], "error": []}
    for output in outputs:
        kind, data = output["type"], output["data"]
        if kind in ("stdout", "stderr"):
            cell[kind] += data
        elif kind in ("display_data", "execute_result"):
            cell["display"].append(data)
        elif kind == "error":
            cell["error"].append(error_fields(data))
    return cell
