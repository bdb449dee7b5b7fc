"""tci.client: a Python SDK for tci (and any TCI-compatible server).

    from tci.client import Client
    with Client() as client:            # $TCI_BASE_URL / $TCI_API_KEY, or the TOGETHER_ ones
        result = client.code_interpreter.execute(code="print(1)", language="python")
        print(result.stdout, result.session_id)
        for event in client.code_interpreter.execute(code="...", stream=True):
            ...                          # OutputEvent(s) as produced, then a ResultEvent
        results = client.code_interpreter.run_batch(["print(1)", "print(2)"], concurrency=8)
        # one ExecuteResult per snippet, in order; a failed one's TCIClientError in its place
        for result in client.runs.stream([Run(code="print(input())", stdin="hi"), ...]):
            print(result.index, result.verdict)  # one-shot runs, each as it finishes
        results = client.runs.batch(runs)        # or all of them, in input order
        sessions = client.code_interpreter.sessions
        sessions.pause(session_id)               # state kept, processes gone; resume(id)
        snap = sessions.snapshot(session_id)     # or any call on the id resumes it
        client.code_interpreter.execute(code="...", snapshot_id=snap.id)  # a new session

AsyncClient has the same surface with ``await``. Only httpx is imported: not the server's
dependencies.
"""

from tci.client._async import AsyncClient, AsyncExecuteStream, AsyncRunStream
from tci.client._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    RunsIncompleteError,
    SessionEndedError,
    TCIClientError,
)
from tci.client._sync import Client, ExecuteStream, RunStream
from tci.client._types import (
    ExecuteResult,
    FileInfo,
    Output,
    OutputEvent,
    PausedSession,
    ResultEvent,
    ResumedSession,
    Run,
    RunResult,
    SessionInfo,
    Skipped,
    Snapshot,
    SnapshotInfo,
    StreamEvent,
    Verdict,
    WrittenFile,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncExecuteStream",
    "AsyncRunStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "ExecuteResult",
    "ExecuteStream",
    "FileInfo",
    "NotFoundError",
    "Output",
    "OutputEvent",
    "PausedSession",
    "RateLimitError",
    "ResultEvent",
    "ResumedSession",
    "Run",
    "RunResult",
    "RunStream",
    "RunsIncompleteError",
    "SessionEndedError",
    "SessionInfo",
    "Skipped",
    "Snapshot",
    "SnapshotInfo",
    "StreamEvent",
    "TCIClientError",
    "Verdict",
    "WrittenFile",
]
