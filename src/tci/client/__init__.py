"""tci.client: a Python SDK for tci (and any TCI-compatible server).

    from tci.client import Client
    with Client() as client:            # $TCI_BASE_URL / $TCI_API_KEY, or the TOGETHER_ ones
        result = client.code_interpreter.execute(code="print(1)", language="python")
        print(result.stdout, result.session_id)
        for event in client.code_interpreter.execute(code="...", stream=True):
            ...                          # OutputEvent(s) as produced, then a ResultEvent
        results = client.code_interpreter.run_batch(["print(1)", "print(2)"], concurrency=8)
        # one ExecuteResult per snippet, in order; a failed one's TCIClientError in its place

AsyncClient has the same surface with ``await``. Only httpx is imported: not the server's
dependencies.
"""

from tci.client._async import AsyncClient, AsyncExecuteStream
from tci.client._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    RateLimitError,
    SessionEndedError,
    TCIClientError,
)
from tci.client._sync import Client, ExecuteStream
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

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncExecuteStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ExecuteResult",
    "ExecuteStream",
    "FileInfo",
    "NotFoundError",
    "Output",
    "OutputEvent",
    "RateLimitError",
    "ResultEvent",
    "SessionEndedError",
    "SessionInfo",
    "StreamEvent",
    "TCIClientError",
    "WrittenFile",
]
