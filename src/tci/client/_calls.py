"""Every operation of the API once, for both clients: each function returns the Call (the
request and how to read its answer), and run_batch's checks, per-snippet Flow and ordering
are here too. Client and AsyncClient only send what these build."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from tci.client._base import Call, Flow, RequestSpec, Timeout, data, raise_for_status
from tci.client._errors import TCIClientError
from tci.client._types import (
    ExecuteResult,
    FileInfo,
    PausedSession,
    ResumedSession,
    Run,
    SessionInfo,
    Snapshot,
    SnapshotInfo,
    WrittenFile,
)

# files= of execute: the wire list [{"name", "encoding", "content"}], or {name: str | bytes}.
FilesArg = Iterable[Mapping[str, Any]] | Mapping[str, str | bytes] | None


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


def _session(session_id: str) -> str:
    return f"/tci/sessions/{quote(session_id, safe='')}"


def _file(session_id: str, path: str) -> str:
    return f"{_session(session_id)}/files/{quote(path.lstrip('/'), safe='/')}"


def execute(
    code: str, language: str, session_id: str | None, files: FilesArg, stream: bool,
    timeout: Timeout | None, execute_timeout: float | None = None,
    snapshot_id: str | None = None,
) -> Call[ExecuteResult]:
    """With ``stream``, only the request is used: the answer is an event stream.
    ``timeout`` is the HTTP request's; ``execute_timeout`` the server's limit for this call
    (the body's ``timeout``, at most the server's TCI_EXECUTE_TIMEOUT). ``snapshot_id`` starts
    a new session from that snapshot (with ``session_id`` too, the server answers 400)."""
    body: dict[str, Any] = {"language": language, "code": code}
    if session_id is not None:
        body["session_id"] = session_id
    if snapshot_id is not None:
        body["snapshot_id"] = snapshot_id
    if execute_timeout is not None:
        body["timeout"] = execute_timeout
    encoded = encode_files(files)
    if encoded is not None:
        body["files"] = encoded
    headers = {}
    if stream:
        body["stream"] = True
        headers["Accept"] = "text/event-stream"
    return Call(RequestSpec("POST", "/tci/execute", json=body, timeout=timeout, headers=headers),
                lambda response: ExecuteResult.from_json(data(response)))


def list_sessions() -> Call[list[SessionInfo]]:
    return Call(RequestSpec("GET", "/tci/sessions"),
                lambda response: [SessionInfo.from_json(s) for s in data(response)["sessions"]])


def create_session() -> Call[SessionInfo]:
    return Call(RequestSpec("POST", "/tci/sessions", json={}),
                lambda response: SessionInfo.from_json(data(response)))


def interrupt(session_id: str) -> Call[bool]:
    return Call(RequestSpec("POST", f"{_session(session_id)}/interrupt"),
                lambda response: bool(data(response)["interrupted"]))


def delete_session(session_id: str) -> Call[None]:
    return Call(RequestSpec("DELETE", _session(session_id)), _checked)


def pause_session(session_id: str) -> Call[PausedSession]:
    return Call(RequestSpec("POST", f"{_session(session_id)}/pause"),
                lambda response: PausedSession.from_json(data(response)))


def resume_session(session_id: str) -> Call[ResumedSession]:
    return Call(RequestSpec("POST", f"{_session(session_id)}/resume"),
                lambda response: ResumedSession.from_json(data(response)))


def snapshot_session(session_id: str) -> Call[Snapshot]:
    return Call(RequestSpec("POST", f"{_session(session_id)}/snapshots"),
                lambda response: Snapshot.from_json(data(response)))


def list_snapshots() -> Call[list[SnapshotInfo]]:
    return Call(RequestSpec("GET", "/tci/snapshots"),
                lambda response: [SnapshotInfo.from_json(s)
                                  for s in data(response)["snapshots"]])


def delete_snapshot(snapshot_id: str) -> Call[None]:
    return Call(RequestSpec("DELETE", f"/tci/snapshots/{quote(snapshot_id, safe='')}"),
                _checked)


def list_files(session_id: str) -> Call[list[FileInfo]]:
    return Call(RequestSpec("GET", f"{_session(session_id)}/files"),
                lambda response: [FileInfo.from_json(f) for f in data(response)["files"]])


def read_file(session_id: str, path: str) -> Call[bytes]:
    return Call(RequestSpec("GET", _file(session_id, path),
                            headers={"Accept": "application/octet-stream"}), _content)


def write_file(session_id: str, path: str, content: bytes | str) -> Call[WrittenFile]:
    body = content.encode() if isinstance(content, str) else bytes(content)
    return Call(RequestSpec("PUT", _file(session_id, path), content=body,
                            headers={"Content-Type": "application/octet-stream"}),
                _written)


def _checked(response: httpx.Response) -> None:
    data(response)


def _written(response: httpx.Response) -> WrittenFile:
    written = data(response)
    return WrittenFile(path=written["path"], size=written["size"])


def _content(response: httpx.Response) -> bytes:
    raise_for_status(response)
    return response.content


# -- one-shot runs ----------------------------------------------------------------------------


def run_body(run: Run | Mapping[str, Any]) -> dict[str, Any]:
    """One run as the wire's JSON object: a Run's unset fields left out (the server's
    defaults), a mapping passed as it is (the server checks it)."""
    if isinstance(run, Mapping):
        return dict(run)
    if not isinstance(run, Run):
        raise TypeError(f"a run is a Run or a mapping of its fields, not {type(run).__name__}")
    body: dict[str, Any] = {"code": run.code, "language": run.language, "stdin": run.stdin}
    for name in ("timeout", "memory_mb", "compile_timeout", "expected_stdout"):
        if getattr(run, name) is not None:
            body[name] = getattr(run, name)
    files = encode_files(run.files)
    if files:
        body["files"] = files
    if run.fetch_files:
        body["fetch_files"] = list(run.fetch_files)
    return body


def batch_runs(bodies: list[dict[str, Any]], timeout: Timeout | None) -> RequestSpec:
    """POST /tci/batch for these runs; its answer is read as a stream of NDJSON lines."""
    return RequestSpec("POST", "/tci/batch", json={"runs": bodies}, timeout=timeout,
                       headers={"Accept": "application/x-ndjson"})


# -- run_batch ------------------------------------------------------------------------------


def batch_flows(
    snippets: list[str], concurrency: int, session_ids: list[str | None] | None,
    language: str, timeout: Timeout | None, execute_timeout: float | None = None,
) -> list[Flow[ExecuteResult | TCIClientError]]:
    """One snippet_flow per snippet, in input order, after checking the arguments."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if session_ids is None:
        session_ids = [None] * len(snippets)
    elif len(session_ids) != len(snippets):
        raise ValueError("session_ids must have one entry (a session id or None) per snippet")
    return [snippet_flow(code, language, session_id, timeout, execute_timeout)
            for code, session_id in zip(snippets, session_ids, strict=True)]


def snippet_flow(
    code: str, language: str, session_id: str | None, timeout: Timeout | None,
    execute_timeout: float | None = None,
) -> Flow[ExecuteResult | TCIClientError]:
    """One snippet of a batch: its result, or the client error that took its place; a
    session it created is ended before it returns (so within its concurrency slot). One
    whose answer never came (a client timeout) is ended by the server, as its id was never
    told."""
    call = execute(code, language, session_id, None, False, timeout, execute_timeout)
    result: ExecuteResult | TCIClientError = yield call
    if session_id is None and isinstance(result, ExecuteResult):
        yield delete_session(result.session_id)  # an error ending it is not the snippet's
    return result


def batch_outcome(outcomes: list[Any], return_exceptions: bool) -> list[Any]:
    """Results in input order, a failed snippet's TCIClientError in its place; with
    ``return_exceptions=False``, the first failure (by input order) is raised instead, once
    every snippet has finished and its session was ended."""
    if not return_exceptions:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    return outcomes
