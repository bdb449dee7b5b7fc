"""Host side of the worker's event frames (format: tci/worker/protocol.py), read as hostile input.

User code runs in the worker and can write anything to the event pipe, so:
- nothing is buffered beyond what the caller allows: a frame larger than its allowance is
  skipped as its bytes arrive, never held or parsed (the caller reports the truncation);
- the only JSON parsed unconditionally is a frame's head, at most MAX_HEAD bytes;
- blobs become text by UTF-8 decoding (with replacement: never a lone surrogate), each blob
  at most once: a head naming one large blob under thousands of MIME types would otherwise
  make the server hold thousands of copies of it;
- a JSON-typed MIME value is parsed only within a budget of JSON values per call
  (`JsonBudget`), counted before parsing, since parsing is what costs time and memory;
- anything malformed is a ProtocolError: the driver ends that session, and only that one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tci.worker.protocol import HEADER, MAX_HEAD, ProtocolError

_MAX_BLOBS = 256  # a MIME bundle has a handful of entries
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


@dataclass
class Frame:
    head: dict[str, Any]
    blobs: list[bytes]


@dataclass
class Skipped:
    """A frame dropped unread because it exceeded its allowance."""

    size: int


@dataclass
class FrameReader:
    """Splits the event pipe into frames. `allowance()` is how many body bytes beyond the head
    the reader may hold for the next frame (the call's remaining output budget)."""

    allowance: Callable[[], int]
    _buffer: bytearray = field(default_factory=bytearray)
    _skip: int = 0  # bytes of an oversized frame still to discard

    def feed(self, chunk: bytes) -> list[Frame | Skipped]:
        frames: list[Frame | Skipped] = []
        if self._skip:
            dropped = min(self._skip, len(chunk))
            self._skip -= dropped
            chunk = chunk[dropped:]
        self._buffer += chunk
        while not self._skip and len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size < HEADER.size:
                raise ProtocolError(f"event frame of {size} bytes has no head")
            if size > HEADER.size + MAX_HEAD + max(0, self.allowance()):
                available = len(self._buffer) - HEADER.size
                del self._buffer[: HEADER.size + min(size, available)]
                self._skip = max(0, size - available)
                frames.append(Skipped(size))
                continue
            if len(self._buffer) < HEADER.size + size:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + size])
            del self._buffer[: HEADER.size + size]
            frames.append(parse_body(body))
        return frames


def parse_body(body: bytes) -> Frame:
    (head_size,) = HEADER.unpack_from(body)
    if head_size > MAX_HEAD or HEADER.size + head_size > len(body):
        raise ProtocolError(f"event head of {head_size} bytes")
    try:
        head = json.loads(body[HEADER.size : HEADER.size + head_size])
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
        raise ProtocolError(f"invalid event head: {exc}") from exc
    if not isinstance(head, dict):
        raise ProtocolError("event head is not an object")
    sizes = head.get("blobs", [])
    if (not isinstance(sizes, list) or len(sizes) > _MAX_BLOBS
            or not all(isinstance(n, int) and n >= 0 for n in sizes)):
        raise ProtocolError("event head has an invalid blob list")
    offset = HEADER.size + head_size
    if offset + sum(sizes) != len(body):
        raise ProtocolError("event blobs do not add up to the frame")
    blobs = []
    for size in sizes:
        blobs.append(body[offset : offset + size])
        offset += size
    return Frame(head, blobs)


def _blob(frame: Frame, index: Any) -> bytes:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(frame.blobs):
        raise ProtocolError(f"event refers to blob {index!r}, which it does not have")
    return frame.blobs[index]


def text_of(frame: Frame) -> str:
    """An error event's text."""
    return _blob(frame, frame.head.get("text")).decode("utf-8", "replace")


def json_values(data: bytes) -> int:
    """An upper bound on the values parsing `data` creates: every value but the first follows
    a comma or opens a container, and every key precedes a colon. Strings' own commas and
    brackets count too, so the bound is conservative; it costs four fast scans."""
    return (data.count(b",") + data.count(b"[") + data.count(b"{") + data.count(b":")) + 1


def _clean(value: Any) -> Any:
    """Replace lone surrogates (JSON may escape them) so the answer is always valid UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


class JsonBudget:
    """How many JSON values a call's outputs may still make the server build."""

    def __init__(self, values: int) -> None:
        self.left = values

    def parse(self, data: bytes) -> Any | None:
        """The parsed value, or None if it would exceed the budget (nothing is parsed)."""
        cost = json_values(data)
        if cost > self.left:
            self.left = 0
            return None
        self.left -= cost
        try:
            value = json.loads(data)
            return _clean(value) if _LONE_SURROGATE_ESCAPE.search(data) else value
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ProtocolError(f"invalid JSON output value: {exc}") from exc


def bundle_of(frame: Frame, budget: JsonBudget) -> dict[str, Any] | None:
    """A rich event's MIME bundle; None if a JSON value in it is over the budget."""
    entries = frame.head.get("bundle")
    if not isinstance(entries, list):
        raise ProtocolError("rich event without a bundle")
    bundle: dict[str, Any] = {}
    taken: set[int] = set()
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or not isinstance(entry[2], bool)):
            raise ProtocolError("invalid bundle entry")
        mime, index, is_json = entry
        data = _blob(frame, index)
        if index in taken:  # one blob under many names: a copy per name, held and sent
            raise ProtocolError(f"event refers to blob {index} twice")
        taken.add(index)
        if is_json:
            value = budget.parse(data)
            if value is None:
                return None
        else:
            value = data.decode("utf-8", "replace")
        bundle[_clean(mime)] = value
    return bundle
