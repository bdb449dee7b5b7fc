"""One exception tree for everything the client raises.

    TCIClientError
    ├── APIConnectionError          the server could not be reached (wraps the httpx error)
    │   ├── APITimeoutError         the request took longer than the client's timeout
    │   └── RunsIncompleteError     client.runs lost its connection: ``results`` so far kept
    └── APIStatusError              the server answered with an error
        ├── BadRequestError         400, 413, 422
        ├── AuthenticationError     401
        ├── NotFoundError           404
        ├── ConflictError           409 (pausing or snapshotting a session while a call runs)
        ├── SessionEndedError       410 (the message says why)
        ├── RateLimitError          429 (``retry_after`` from the Retry-After header)
        └── APIError                anything else, and an ``error`` event in a stream
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tci.client._types import RunResult


class TCIClientError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(TCIClientError):
    """The request did not get an answer (connection refused, reset, ...). ``__cause__`` is
    the httpx error."""


class APITimeoutError(APIConnectionError):
    """The request did not finish within the client's timeout."""


class RunsIncompleteError(APIConnectionError):
    """``client.runs`` lost a connection (reset, server gone, an answer that ended early)
    before every run had its result. Nothing received is lost: ``results`` holds every
    result that arrived, in input order (a stream already yielded them), and ``missing``
    the indexes of the runs without one. What became of those is unknown (the server stops
    a batch's runs when its client leaves); a run has no effect outside its own sandbox, so
    sending them again is safe. ``__cause__`` is the connection error."""

    def __init__(self, message: str, *, results: list[RunResult], missing: list[int]) -> None:
        super().__init__(message)
        self.results = results
        self.missing = missing


class APIStatusError(TCIClientError):
    """The server answered with an error. ``status_code`` is the HTTP status (None for an
    ``error`` event inside a stream), ``errors`` the body's ``errors`` list, ``body`` the
    parsed body (or the raw text if it was not JSON)."""

    def __init__(
        self, message: str, *, status_code: int | None, errors: list[Any] | None = None,
        body: Any = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.errors = errors or [message]
        self.body = body
        self.headers = headers or {}

    def __str__(self) -> str:
        return self.message if self.status_code is None else f"{self.status_code}: {self.message}"


class BadRequestError(APIStatusError):
    """400 (bad files), 413 (too large), 422 (invalid body)."""


class AuthenticationError(APIStatusError):
    """401: missing, unknown or revoked API key."""


class NotFoundError(APIStatusError):
    """404: unknown session or snapshot, another key's, or a missing file."""


class ConflictError(APIStatusError):
    """409: the session is running a call (pause or snapshot it once the call is done)."""


class SessionEndedError(APIStatusError):
    """410: the session expired or was ended; the message says why."""


class RateLimitError(APIStatusError):
    """429: too many live sessions (also resuming a paused one on a full server), or the run
    queue is full. ``retry_after`` is the server's Retry-After in seconds (None if absent)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class APIError(APIStatusError):
    """Any other error status (5xx, ...), or an ``error`` event ending a stream."""


STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    410: SessionEndedError,
    413: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
}
