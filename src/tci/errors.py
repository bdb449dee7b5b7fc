"""One exception tree. Each class maps once (server/errors.py) to an HTTP status and a
TCI error body {"data": null, "errors": [message]}."""

from __future__ import annotations


class TCIError(Exception):
    status_code = 500
    # What a client is told of a server-side failure (5xx). Its `message` can name the
    # server's insides (paths, host names, the database's name and address): that goes to
    # the log only. A client's own error (4xx) is told as it is.
    public_text = "internal server error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def client_message(self) -> str:
        return self.message if self.status_code < 500 else self.public_text


class BadRequest(TCIError):
    status_code = 400


class Unauthorized(TCIError):
    status_code = 401


class NotFound(TCIError):
    status_code = 404


class SessionEnded(TCIError):
    """The session existed for this caller but has expired or was ended (says why)."""

    status_code = 410


class Conflict(TCIError):
    """The request clashes with what the resource is doing (pausing during a running call)."""

    status_code = 409


class PayloadTooLarge(TCIError):
    status_code = 413


class Unprocessable(TCIError):
    """Well-formed but unusable input the schema cannot express (e.g. since after until)."""

    status_code = 422


class RetryLater(TCIError):
    """A refusal the client should retry after `retry_after` seconds (the Retry-After
    header): load or a passing outage, not the request's fault."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManySessions(RetryLater):
    status_code = 429


class SandboxUnavailable(TCIError):
    """The server could not start a sandbox (host problem, not the client's)."""

    status_code = 503
    public_text = "no sandbox can be started now; retry later"

    def __init__(self, message: str, public: bool = False) -> None:
        super().__init__(message)
        # True: the message names only a limit (no path, host or system error), so the
        # client may read it, e.g. the disk-space refusal naming TCI_MIN_FREE_DISK_BYTES.
        self.public = public

    @property
    def client_message(self) -> str:
        return self.message if self.public else self.public_text


class ServerBusy(RetryLater):
    """Too much of one kind of work is in flight to take this request now (e.g. API key
    look-ups, TCI_AUTH_MAX_LOOKUPS); the client should retry after `retry_after` seconds."""

    status_code = 503

    @property
    def client_message(self) -> str:  # says only which limit, for the client to wait out
        return self.message


class StoreUnavailable(RetryLater):
    """The database cannot be reached or used now (down, restarting, unreachable, locked):
    the request changed nothing there; the client should retry after `retry_after` seconds."""

    status_code = 503
    public_text = "the service is temporarily unavailable; nothing was changed, retry later"


class HostUnreachable(RetryLater):
    """The host running the session cannot be reached now (on Ray: its actor is unavailable
    or a call to it timed out, but Ray has not said it died): the session is kept, and the
    client should retry after `retry_after` seconds."""

    status_code = 503
    public_text = "the session's host cannot be reached now; the session is kept, retry later"


class WorkerDied(TCIError):
    """The session's worker process ended; internal, turned into an `error` output."""


class ClientGone(TCIError):
    """The client disconnected before its answer; nobody reads this status (nginx's 499)."""

    status_code = 499
