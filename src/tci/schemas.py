"""Wire models of the TCI API, shared by the server, the SDK and MCP."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tci.errors import BadRequest


def _encodable(value: str) -> str:
    """JSON may carry lone surrogates (\\ud800) that no file or process can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a character that is not valid Unicode at {exc.start}") from exc
    return value


Text = Annotated[str, AfterValidator(_encodable)]

# The languages a session runs (worker/kernels/), by the names clients send: the together SDK
# passes any string through, and E2B's and Jupyter's spellings ("js", "R") are common.
SESSION_LANGUAGES = ("python", "javascript", "typescript", "bash", "r")
_LANGUAGE_ALIASES = {"py": "python", "python3": "python", "js": "javascript",
                     "node": "javascript", "nodejs": "javascript", "ts": "typescript",
                     "sh": "bash", "shell": "bash"}


def _canonical_language(name: str) -> str:
    lowered = name.strip().lower()
    return _LANGUAGE_ALIASES.get(lowered, lowered)


def check_session_language(language: str) -> None:
    """An unknown language is the caller's error: 400 naming the offered ones, not a 422 (the
    body is well-formed, this server just does not offer it)."""
    if language not in SESSION_LANGUAGES:
        raise BadRequest(f"language {language!r} is not offered for sessions; "
                         f"this server offers: {', '.join(SESSION_LANGUAGES)}")


class FileInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text
    encoding: Literal["string", "base64"] = "string"
    content: Text


class ExecuteRequest(BaseModel):
    # Documented as the canonical names; the aliases and other spellings are accepted too.
    language: Annotated[str, AfterValidator(_canonical_language),
                        Field(json_schema_extra={"enum": list(SESSION_LANGUAGES)})]
    code: Text
    session_id: Text | None = None
    # Start a new session from this snapshot (POST /tci/sessions/{id}/snapshots); not with
    # session_id.
    snapshot_id: Text | None = None
    files: list[FileInput] | None = None
    stream: bool = False  # answer text/event-stream: outputs as produced, then the response
    # Seconds this call may run before it is interrupted (then killed after the grace period),
    # at most the server's TCI_EXECUTE_TIMEOUT, which applies when it is absent. Not TCI's
    # field: the together SDK sends it with extra_body={"timeout": 10}.
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)

    @model_validator(mode="after")
    def _offered_language(self) -> ExecuteRequest:
        # After the fields: a body with other problems gets its 422 listing them all first.
        check_session_language(self.language)
        return self


class Output(BaseModel):
    type: Literal["stdout", "stderr", "error", "display_data", "execute_result"]
    data: str | dict[str, Any]


class ExecuteData(BaseModel):
    session_id: str
    status: Literal["completed"] = "completed"
    outputs: list[Output]


class ExecuteResponse(BaseModel):
    data: ExecuteData
    errors: None = None


class SessionInfo(BaseModel):
    id: str
    execute_count: int
    started_at: datetime
    last_execute_at: datetime
    expires_at: datetime
    # paused: its processes ended, its state kept (POST /tci/sessions/{id}/pause); executing on
    # it resumes it. While paused its lifetime clock stops, and state_bytes is what it keeps.
    status: Literal["running", "paused"] = "running"
    paused_at: datetime | None = Field(default=None, exclude_if=lambda value: value is None)
    state_bytes: int | None = Field(default=None, exclude_if=lambda value: value is None)


class SessionList(BaseModel):
    sessions: list[SessionInfo] = Field(default_factory=list)


class SessionListResponse(BaseModel):
    data: SessionList
    errors: None = None


class NewSessionRequest(BaseModel):
    """POST /tci/sessions takes no options yet: no body, or `{}`."""

    model_config = ConfigDict(extra="forbid")


class SessionResponse(BaseModel):
    data: SessionInfo
    errors: None = None


class Interrupted(BaseModel):
    id: str
    interrupted: bool = Field(description="false: no call was running, nothing was done")


class InterruptResponse(BaseModel):
    data: Interrupted
    errors: None = None


class RunsUsageInfo(BaseModel):
    count: int = Field(description="one-shot runs (batch, /sandboxfusion/run_code)")
    verdicts: dict[str, int] = Field(description="runs per verdict, every verdict named")
    wall_seconds: float


class UsageBucketInfo(BaseModel):
    start: datetime = Field(description="the bucket's UTC hour or day boundary")
    sessions: int
    executions: int
    cpu_seconds: float
    runs: RunsUsageInfo
    cost_usd: float


class KeptStateInfo(BaseModel):
    paused_sessions: int
    paused_bytes: int = Field(description="what the paused sessions' kept states take on disk")
    snapshots: int
    snapshot_bytes: int


class UsageData(BaseModel):
    since: datetime
    until: datetime
    sessions: int
    executions: int
    cpu_seconds: float
    runs: RunsUsageInfo = Field(description="of the UTC hours the window touches, whole")
    cost_usd: float
    kept_state: KeptStateInfo | None = Field(
        default=None, description="the key's paused sessions and snapshots now, and the "
        "storage they take (not limited to the window)")
    series: list[UsageBucketInfo] | None = Field(
        default=None, description="only with `bucket`: oldest first, zero-filled; its sums "
        "are the totals")


class UsageResponse(BaseModel):
    data: UsageData
    errors: None = None


class ErrorResponse(BaseModel):
    data: None = None
    errors: list[str | dict[str, Any]]
