"""What Client and AsyncClient share besides the API's calls (_calls.py): configuration, the
Call and Flow types, and the mapping of answers and httpx errors to the exception tree. Only
the I/O (httpx.Client vs httpx.AsyncClient) lives in _sync.py and _async.py."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from tci.client._errors import (
    STATUS_ERRORS,
    APIConnectionError,
    APIError,
    APITimeoutError,
    RateLimitError,
)

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# A call may run TCI_EXECUTE_TIMEOUT (120 s by default) plus the interrupt grace: wait longer.
REQUEST_TIMEOUT_SECONDS = 180.0
# A server that accepts no connection within this is down or unreachable, not busy.
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_TIMEOUT = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)

Timeout = float | httpx.Timeout | None


def resolve_base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("TCI_BASE_URL") or os.environ.get("TOGETHER_BASE_URL")
            or DEFAULT_BASE_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("TCI_API_KEY") or os.environ.get("TOGETHER_API_KEY")


class BaseClient:
    """The configuration of both clients."""

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


class Resource(Generic[C]):
    """A group of methods (code_interpreter, sessions, files) bound to one client."""

    def __init__(self, client: C) -> None:
        self._client = client


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request, independent of the transport. ``path`` is relative to base_url;
    ``timeout`` None means the client's own."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    timeout: Timeout | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        # build_request is plain (no I/O) on both httpx clients.
        timeout = httpx.USE_CLIENT_DEFAULT if self.timeout is None else self.timeout
        return http.build_request(self.method, self.path, json=self.json, content=self.content,
                                  headers=self.headers, timeout=timeout)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API operation: the request, and how to read its answer (raising the client's
    exception for an error status). A client only sends it: ``call.parse(send(request))``."""

    request: RequestSpec
    parse: Callable[[httpx.Response], T]


# An operation of several calls, written once for both clients (run_batch's snippet): a
# generator that yields the Calls to make and is sent back each one's result, or the
# TCIClientError it raised. A client's _run drives it with its own I/O.
Flow = Generator[Call[Any], Any, T]


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Around each I/O step: httpx's errors become the client's, ``raise ... from exc``."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"request timed out: {exc}") from exc
    except httpx.HTTPError as exc:
        raise APIConnectionError(f"could not reach the server: {exc!r}") from exc


def joined(errors: list[Any]) -> str:
    return "; ".join(e if isinstance(e, str) else json.dumps(e) for e in errors)


def raise_for_status(response: httpx.Response) -> None:
    """Map an error status to the exception tree. The body must already be read."""
    if response.is_success:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        message = joined(errors)
    else:
        message = (body if isinstance(body, str) else "") or response.reason_phrase or "error"
    kwargs: dict[str, Any] = {"status_code": response.status_code, "errors": errors,
                              "body": body, "headers": dict(response.headers)}
    cls = STATUS_ERRORS.get(response.status_code, APIError)
    if cls is RateLimitError:
        raise RateLimitError(message, retry_after=_retry_after(response), **kwargs)
    raise cls(message, **kwargs)


def data(response: httpx.Response) -> Any:
    """The ``data`` of a successful JSON answer."""
    raise_for_status(response)
    try:
        body = response.json()
    except ValueError as exc:
        raise APIError(f"the server answered with a body that is not JSON: "
                       f"{response.text[:200]!r}", status_code=response.status_code,
                       body=response.text) from exc
    return body["data"]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
