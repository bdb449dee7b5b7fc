"""Framing shared by the host driver and the worker.

Every frame is a 4-byte big-endian length followed by that many bytes.

Host -> worker (commands) frames hold UTF-8 JSON: the host is trusted and commands are small.

Worker -> host (events) frames are read by a server that must not trust them: user code runs
in the worker and can write to the event pipe itself. So that the host never has to parse an
arbitrarily large or deeply built JSON document, an event frame is a small JSON *head* plus
raw byte *blobs*:

    body = head length (4 bytes) | head (UTF-8 JSON, at most MAX_HEAD bytes) | blob | blob ...

The head names the blobs' lengths (`"blobs": [n, ...]`) and says where each belongs: an error's
text (`"text": i`), or a MIME bundle (`"bundle": [[mime, i, is_json], ...]`, where a JSON-typed
value such as `application/json` is sent as its JSON text). The host decodes blobs as UTF-8
text (fast, and never more objects than one string each), and parses JSON-typed values only
within its own budget (kernel/frames.py).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

HEADER = struct.Struct(">I")
# A command frame larger than this is a protocol violation (code is capped far earlier).
MAX_FRAME = 256 * 1024 * 1024
# An event frame's head: small fields only (type, id, flags, MIME names, blob lengths).
MAX_HEAD = 64 * 1024


Message = dict[str, Any]  # one frame's JSON object: a command, an event, a spec


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


def _text_bytes(text: str) -> bytes:
    # A lone surrogate (an exception message built from undecodable bytes, say) cannot be
    # UTF-8: it is sent as its escape, visibly, rather than losing the whole output.
    return text.encode("utf-8", "backslashreplace")


def encode_event(event: Message) -> bytes:
    """An event as head + blobs (see the module docstring)."""
    head = {key: value for key, value in event.items() if key != "data"}
    blobs: list[bytes] = []

    def blob(data: bytes) -> int:
        blobs.append(data)
        return len(blobs) - 1

    data = event.get("data")
    if isinstance(data, str):
        head["text"] = blob(_text_bytes(data))
    elif isinstance(data, dict):
        bundle = []
        for mime, value in data.items():
            if isinstance(value, str):
                bundle.append([str(mime), blob(_text_bytes(value)), False])
            else:
                text = json.dumps(value, separators=(",", ":"), default=repr)
                bundle.append([str(mime), blob(text.encode("ascii")), True])
        head["bundle"] = bundle
    head["blobs"] = [len(b) for b in blobs]
    # ASCII-only head: no lone surrogate can make it unencodable.
    head_bytes = json.dumps(head, separators=(",", ":"), default=repr).encode("ascii")
    body_size = HEADER.size + len(head_bytes) + sum(head["blobs"])
    return b"".join((HEADER.pack(body_size), HEADER.pack(len(head_bytes)), head_bytes, *blobs))


def decode_body(body: bytes) -> Message:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"invalid frame body: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("frame body is not an object")
    return message


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd: int, message: Message) -> None:
    """Write one whole command frame to a blocking fd, retrying partial writes."""
    _write_all(fd, encode(message))


def write_event(fd: int, event: Message) -> None:
    """Write one whole event frame (head + blobs) to a blocking fd (used by the worker)."""
    _write_all(fd, encode_event(event))


def read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("peer closed the channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Message:
    """Read one command frame from a blocking fd (used by the worker)."""
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is too large")
    return decode_body(read_exact(fd, size))
