"""One exception tree. Each class maps once (server/errors.py) to an HTTP status and a
TCI error body {"data": null, "errors": [message]}."""

from __future__ import annotations


class TCIError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(TCIError):
    status_code = 400


class Unauthorized(TCIError):
    status_code = 401


class NotFound(TCIError):
    status_code = 404


class SessionEnded(TCIError):
    """The session existed for this caller but has expired or was ended (says why)."""

    status_code = 410


class PayloadTooLarge(TCIError):
    status_code = 413


class Unprocessable(TCIError):
    """Well-formed but unusable input the schema cannot express (e.g. since after until)."""

    status_code = 422


class TooManySessions(TCIError):
    status_code = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SandboxUnavailable(TCIError):
    """The server could not start a sandbox (host problem, not the client's)."""

    status_code = 503


class ServerBusy(TCIError):
    """Too much of one kind of work is in flight to take this request now (e.g. API key
    look-ups, TCI_AUTH_MAX_LOOKUPS); the client should retry after `retry_after` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(TCIError):
    """The database cannot be reached or used now (down, restarting, unreachable, locked):
    the request changed nothing there; the client should retry after `retry_after` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WorkerDied(TCIError):
    """The session's worker process ended; internal, turned into an `error` output."""


class ClientGone(TCIError):
    """The client disconnected before its answer; nobody reads this status (nginx's 499)."""

    status_code = 499
