"""What Client and AsyncClient share: configuration, request building, response and error
parsing, and the Server-Sent Events decoder. Only the I/O (httpx.Client vs
httpx.AsyncClient) lives in _sync.py and _async.py."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from tci.client._errors import (
    STATUS_ERRORS,
    APIConnectionError,
    APIError,
    APITimeoutError,
    RateLimitError,
    TCIClientError,
)
from tci.client._types import (
    ExecuteResult,
    FileInfo,
    Output,
    OutputEvent,
    ResultEvent,
    SessionInfo,
    StreamEvent,
    WrittenFile,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# A call may run TCI_EXECUTE_TIMEOUT (120 s by default) plus the interrupt grace: wait longer.
DEFAULT_TIMEOUT = httpx.Timeout(180.0, connect=10.0)

# files= of execute: the wire list [{"name", "encoding", "content"}], or {name: str | bytes}.
FilesArg = Iterable[Mapping[str, Any]] | Mapping[str, str | bytes] | None
Timeout = float | httpx.Timeout | None


def resolve_base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("TCI_BASE_URL") or os.environ.get("TOGETHER_BASE_URL")
            or DEFAULT_BASE_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("TCI_API_KEY") or os.environ.get("TOGETHER_API_KEY")


@dataclass
class RequestSpec:
    """One HTTP request, independent of the transport. ``path`` is relative to base_url."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    timeout: Timeout | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.json is not None:
            out["json"] = self.json
        if self.content is not None:
            out["content"] = self.content
        if self.headers:
            out["headers"] = self.headers
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


def _segment(value: str) -> str:
    return quote(value, safe="")


def _file_path(path: str) -> str:
    return quote(path.lstrip("/"), safe="/")


def encode_files(files: FilesArg) -> list[dict[str, Any]] | None:
    if files is None:
        return None
    if isinstance(files, Mapping):
        encoded = []
        for name, content in files.items():
            if isinstance(content, bytes | bytearray | memoryview):
                encoded.append({"name": name, "encoding": "base64",
                                "content": base64.b64encode(bytes(content)).decode()})
            else:
                encoded.append({"name": name, "encoding": "string", "content": content})
        return encoded
    return [dict(f) for f in files]


class BaseClient:
    """Configuration and the request/response logic of both clients."""

    def __init__(
        self, *, base_url: str | None = None, api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT, headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.api_key = resolve_api_key(api_key)
        self.timeout = timeout
        self.headers: dict[str, str] = {"Accept": "application/json", **(headers or {})}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"

    # -- request building ---------------------------------------------------------------

    @staticmethod
    def _execute_request(
        code: str, language: str, session_id: str | None, files: FilesArg, stream: bool,
        timeout: Timeout | None,
    ) -> RequestSpec:
        body: dict[str, Any] = {"language": language, "code": code}
        if session_id is not None:
            body["session_id"] = session_id
        encoded = encode_files(files)
        if encoded is not None:
            body["files"] = encoded
        headers = {}
        if stream:
            body["stream"] = True
            headers["Accept"] = "text/event-stream"
        return RequestSpec("POST", "/tci/execute", json=body, timeout=timeout, headers=headers)

    @staticmethod
    def _list_sessions_request() -> RequestSpec:
        return RequestSpec("GET", "/tci/sessions")

    @staticmethod
    def _create_session_request() -> RequestSpec:
        return RequestSpec("POST", "/tci/sessions", json={})

    @staticmethod
    def _interrupt_request(session_id: str) -> RequestSpec:
        return RequestSpec("POST", f"/tci/sessions/{_segment(session_id)}/interrupt")

    @staticmethod
    def _delete_session_request(session_id: str) -> RequestSpec:
        return RequestSpec("DELETE", f"/tci/sessions/{_segment(session_id)}")

    @staticmethod
    def _list_files_request(session_id: str) -> RequestSpec:
        return RequestSpec("GET", f"/tci/sessions/{_segment(session_id)}/files")

    @staticmethod
    def _read_file_request(session_id: str, path: str) -> RequestSpec:
        return RequestSpec("GET", f"/tci/sessions/{_segment(session_id)}/files/{_file_path(path)}",
                           headers={"Accept": "application/octet-stream"})

    @staticmethod
    def _write_file_request(session_id: str, path: str, data: bytes | str) -> RequestSpec:
        content = data.encode() if isinstance(data, str) else bytes(data)
        return RequestSpec("PUT", f"/tci/sessions/{_segment(session_id)}/files/{_file_path(path)}",
                           content=content,
                           headers={"Content-Type": "application/octet-stream"})

    # -- response parsing ---------------------------------------------------------------

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        """Map an error status to the exception tree. The body must already be read."""
        if response.is_success:
            return
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            message = "; ".join(e if isinstance(e, str) else json.dumps(e) for e in errors)
        else:
            message = (body if isinstance(body, str) else "") or response.reason_phrase or "error"
        kwargs: dict[str, Any] = {"status_code": response.status_code, "errors": errors,
                                  "body": body, "headers": dict(response.headers)}
        cls = STATUS_ERRORS.get(response.status_code, APIError)
        if cls is RateLimitError:
            raise RateLimitError(message, retry_after=_retry_after(response), **kwargs)
        raise cls(message, **kwargs)

    @classmethod
    def _data(cls, response: httpx.Response) -> Any:
        cls._raise_for_status(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise APIError(f"the server answered with a body that is not JSON: "
                           f"{response.text[:200]!r}", status_code=response.status_code,
                           body=response.text) from exc
        return body["data"]

    @classmethod
    def _parse_execute(cls, response: httpx.Response) -> ExecuteResult:
        return ExecuteResult.from_json(cls._data(response))

    @classmethod
    def _parse_sessions(cls, response: httpx.Response) -> list[SessionInfo]:
        return [SessionInfo.from_json(s) for s in cls._data(response)["sessions"]]

    @classmethod
    def _parse_session(cls, response: httpx.Response) -> SessionInfo:
        return SessionInfo.from_json(cls._data(response))

    @classmethod
    def _parse_interrupted(cls, response: httpx.Response) -> bool:
        return bool(cls._data(response)["interrupted"])

    @classmethod
    def _parse_files(cls, response: httpx.Response) -> list[FileInfo]:
        return [FileInfo.from_json(f) for f in cls._data(response)["files"]]

    @classmethod
    def _parse_written(cls, response: httpx.Response) -> WrittenFile:
        data = cls._data(response)
        return WrittenFile(path=data["path"], size=data["size"])


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def connection_error(exc: httpx.HTTPError) -> TCIClientError:
    """The client's exception for an httpx error; raise it ``from exc``."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out: {exc}")
    return APIConnectionError(f"could not reach the server: {exc!r}")


class SSEDecoder:
    """Turns the lines of a text/event-stream into StreamEvents (``output`` and ``result``;
    an ``error`` event raises APIError; ``:`` comments such as keep-alives are skipped)."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> StreamEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def flush(self) -> StreamEvent | None:
        return self._dispatch()

    def _dispatch(self) -> StreamEvent | None:
        event, data = self._event or "message", "\n".join(self._data)
        self._event, self._data = None, []
        if not data:
            return None
        payload = json.loads(data)
        if event == "output":
            return OutputEvent(Output.from_json(payload))
        if event == "result":
            return ResultEvent(ExecuteResult.from_json(payload["data"]))
        if event == "error":
            errors = payload.get("errors") or ["the call failed"]
            message = "; ".join(e if isinstance(e, str) else json.dumps(e) for e in errors)
            raise APIError(message, status_code=None, errors=errors, body=payload)
        return None


def check_batch(
    snippets: list[str], concurrency: int, session_ids: list[str | None] | None
) -> list[str | None]:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if session_ids is None:
        return [None] * len(snippets)
    if len(session_ids) != len(snippets):
        raise ValueError("session_ids must have one entry (a session id or None) per snippet")
    return list(session_ids)


def batch_outcome(outcomes: list[Any], return_exceptions: bool) -> list[Any]:
    """Results in input order; without return_exceptions, the first failure (by input order)
    is raised once every snippet has finished and its session was ended."""
    if not return_exceptions:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    return outcomes

