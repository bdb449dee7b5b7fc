"""A minimal HTTP/1.1 keep-alive client for the timed paths.

A general client (httpx) spends a few hundred microseconds of CPU per request, which on this
2-core machine is taken from the server under test and shows up in a sub-millisecond round
trip. This one sends pre-encoded requests and reads `Content-Length` bodies, nothing more;
the report also times the same call through httpx, which is what most callers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

HOST = "127.0.0.1"
# uvicorn closes a keep-alive connection idle for 5 s; reconnect before that rather than
# send a request into a socket the server is closing.
_MAX_IDLE = 4.0


class HttpError(Exception):
    pass


def encode_request(
    method: str, path: str, port: int, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def encode_json(method: str, path: str, port: int, headers: dict[str, str], obj: Any) -> bytes:
    return encode_request(method, path, port, headers, json.dumps(obj).encode())


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, server closes) from a response head."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise HttpError(f"bad status line {lines[0]!r}") from exc
    length, close = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
        elif name == "transfer-encoding":
            raise HttpError("chunked responses are not supported by the bench client")
    if length is None:
        raise HttpError("response without Content-Length")
    return status, length, close


class Connection:
    """One blocking keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port: int, timeout: float = 300.0) -> None:
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._used = 0.0

    def _connect(self) -> None:
        sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._file = sock.makefile("rb")
        self._used = time.monotonic()

    def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        if self._sock is not None and time.monotonic() - self._used > _MAX_IDLE:
            self.close()
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        self._sock.sendall(request)
        head = bytearray()
        while True:
            line = self._file.readline()
            if not line:
                self.close()
                raise HttpError("connection closed by the server")
            if line == b"\r\n":
                break
            head += line
        status, length, close = _parse_head(bytes(head))
        body = self._file.read(length)
        self._used = time.monotonic()
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self._sock is not None:
            self._file.close()
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncConnection:
    """One asyncio keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = 0.0

    async def open(self) -> AsyncConnection:
        self._reader, self._writer = await asyncio.open_connection(HOST, self.port, limit=1 << 22)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._used = time.monotonic()
        return self

    async def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is not None and time.monotonic() - self._used > _MAX_IDLE:
            await self.close()
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            await self.close()
            raise HttpError("connection closed by the server") from exc
        status, length, close = _parse_head(head[:-4])
        body = await self._reader.readexactly(length)
        self._used = time.monotonic()
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._reader = self._writer = None
