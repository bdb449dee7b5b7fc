"""Framing shared by the host driver and the worker.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
JSON keeps the worker dependency-free and is fast enough: a round trip costs far less
than a millisecond, dominated by the two pipe hops.
"""

from __future__ import annotations

import json
import os
import struct

HEADER = struct.Struct(">I")
# A frame larger than this is a protocol violation (the host cuts outputs far earlier).
MAX_FRAME = 256 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"invalid frame body: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("frame body is not an object")
    return message


def write_frame(fd: int, message: dict) -> None:
    """Write one whole frame to a blocking fd, retrying partial writes."""
    data = memoryview(encode(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("peer closed the channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict:
    """Read one frame from a blocking fd (used by the worker)."""
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is too large")
    return decode_body(read_exact(fd, size))
