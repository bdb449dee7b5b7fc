"""Worker output -> TCI outputs (pure), within the call's output budget.

Consecutive chunks of one stream are merged, as a user reading the response expects one
`stdout` entry per stretch of printing, not one per write. The budget (TCI_MAX_OUTPUT_BYTES)
counts what the client is sent, in bytes of the JSON answer: each output's data as JSON
encodes it (a NUL is 6 bytes, `\\u0000`; a quote 2), plus each output's own frame, so that
neither escape-heavy text nor thousands of empty outputs make the answer bigger than the
setting. Text, rich data and errors count alike (user code can forge as many as it likes).
Past the budget further output is dropped and one notice says so; the call still completes.
So that the reason a cell stopped is not lost to a flood of earlier output, the first error
past the budget keeps its last ERROR_RESERVE bytes (a traceback ends with the exception).

What is admitted is also handed to `on_output` as it comes (the streamed answer), so the
streamed and the unstreamed answers hold the same outputs under the same cap. A streamed
answer sends every line as an event of its own (kernel/coalesce.py), so there the frame of
each line's event counts too: as the line's newline is admitted, or, for a line sent before
its end, when the coalescer sends it (`spend`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

STREAMS = ("stdout", "stderr")
RICH = ("display_data", "execute_result")
ERROR_RESERVE = 16 * 1024
# Bytes an output adds to the answer around its data: `{"type":"execute_result","data":},`
# is 34, the longest.
OUTPUT_FRAME = 40
# Bytes a streamed event adds around its output's data: `event: output\ndata: ` and `\n\n`
# (server/streaming.py) around the output's own frame.
EVENT_FRAME = 24 + OUTPUT_FRAME

OutputSink = Callable[[dict[str, Any]], None]

# Characters JSON leaves as they are but some line splitters (str.splitlines, so httpx's
# iter_lines) break lines at: a streamed event must stay one line, so they are escaped.
_LINE_BREAKS = ("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")
# One encoder for every call: json.dumps with options builds a new one each time (10x slower,
# and it runs for every write the code makes).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def to_json(value: Any) -> str:
    """`value` as the JSON the client is sent: UTF-8 characters as they are (as in the plain
    answer), every line break escaped (as a streamed event needs), no NaN or infinity (not
    JSON: ValueError)."""
    text = _ENCODER.encode(value)
    for char, escape in _LINE_BREAKS:
        if char in text:
            text = text.replace(char, escape)
    return text


def json_size(value: Any) -> int:
    """Bytes of `value` as JSON in the plain answer or a streamed event, whichever is more."""
    return len(to_json(value).encode("utf-8", "surrogatepass"))


def _text_size(text: str) -> int:
    """Bytes of a string's JSON encoding, without its quotes: what it adds to a string."""
    return json_size(text) - 2


def _longest_fitting(text: str, room: int, size: Callable[[str], int],
                     tail: bool = False) -> str:
    """The longest prefix (or suffix) of `text` whose `size` fits in `room` bytes. Each
    character costs at least one byte, so no more than `room` characters are tried."""
    def part(n: int) -> str:
        return text[len(text) - n:] if tail else text[:n]

    low, high = 0, min(len(text), max(0, room))
    while low < high:  # binary search: `size` only grows with the length
        middle = (low + high + 1) // 2
        if size(part(middle)) <= room:
            low = middle
        else:
            high = middle - 1
    return part(low)


class OutputCollector:
    def __init__(self, max_bytes: int, on_output: OutputSink | None = None) -> None:
        self._outputs: list[dict[str, Any]] = []
        # The last output's text as written, joined only when read: appending to one growing
        # string per write would copy it every time (quadratic in a flood of tiny writes).
        self._pieces: list[str] = []
        self.max_bytes = max_bytes
        self.used = 0
        self.truncated = False
        self.reserve_used = False
        self.on_output = on_output

    @property
    def outputs(self) -> list[dict[str, Any]]:
        self._join_pieces()
        return self._outputs

    def _join_pieces(self) -> None:
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        if self._pieces:
            self._outputs[-1]["data"] = self._pieces[0]

    def remaining(self) -> int:
        return 0 if self.truncated else max(0, self.max_bytes - self.used)

    def spend(self, size: int) -> None:
        """Bytes sent for outputs already admitted (a streamed partial line's event)."""
        self.used += size

    def _frame(self) -> int:
        """Bytes a new rich output or error adds around its data: in the answer, and as an
        event if streamed. (A stream's events are counted by its lines.)"""
        return OUTPUT_FRAME + (EVENT_FRAME if self.on_output is not None else 0)

    def _stream_size(self, text: str) -> int:
        """Bytes `text` adds to its stream's output; streamed, each line ending in it ends an
        event."""
        size = _text_size(text)
        if self.on_output is not None:
            size += EVENT_FRAME * text.count("\n")
        return size

    def _append(self, output: dict[str, Any]) -> None:
        self._join_pieces()
        self._pieces = []
        self._outputs.append(output)
        if self.on_output is not None:
            self.on_output(dict(output))

    def notice_truncated(self) -> None:
        if not self.truncated:
            self.truncated = True
            self._append({
                "type": "stderr",
                "data": f"\n[output truncated: more than {self.max_bytes} bytes "
                "(TCI_MAX_OUTPUT_BYTES); the rest of this call's output was dropped]\n",
            })

    def notice_dropped(self, why: str) -> None:
        """One output was refused for a reason of its own; later outputs still come."""
        self.add_stream("stderr", f"\n[output dropped: {why}]\n")

    def add_stream(self, name: str, text: str) -> None:
        if not text or self.truncated:
            return
        last = self._outputs[-1] if self._outputs else None
        merged = last is not None and last["type"] == name
        room = self.max_bytes - self.used - (0 if merged else OUTPUT_FRAME)
        size = self._stream_size(text)
        cut = size > room
        if cut:
            text = _longest_fitting(text, room, self._stream_size)
            size = self._stream_size(text)
        if text:
            self.used += size
            if merged and last is not None:
                if not self._pieces:
                    self._pieces.append(last["data"])
                self._pieces.append(text)
                if self.on_output is not None:
                    self.on_output({"type": name, "data": text})
            else:
                self.used += OUTPUT_FRAME
                self._append({"type": name, "data": text})
        if cut:
            self.notice_truncated()

    def add_rich(self, kind: str, data: dict[str, Any]) -> None:
        """A MIME bundle, counted as it will be sent."""
        if self.truncated:
            return
        try:
            size = self._frame() + json_size(data)
        except ValueError:  # NaN or infinity: the answer could not carry it
            self.notice_dropped(f"{kind} with a number JSON cannot hold (NaN or infinity)")
            return
        if size > self.max_bytes - self.used:
            self.notice_truncated()
            return
        self.used += size
        self._append({"type": kind, "data": data})

    def add_user_error(self, text: str) -> None:
        """An error the worker reported (a traceback): counted like any other output."""
        size = self._frame() + _text_size(text)
        if not self.truncated and size <= self.max_bytes - self.used:
            self.used += size
            self._append({"type": "error", "data": text})
            return
        self.notice_truncated()
        if not self.reserve_used:
            self.reserve_used = True
            tail = _longest_fitting(text, ERROR_RESERVE, _text_size, tail=True)
            self._append({"type": "error", "data": tail})

    def add_error(self, message: str) -> None:
        """The server's own word (a timeout, a death): always kept, and short."""
        self._append({"type": "error", "data": message})

    def replace_interrupt_error(self, message: str) -> None:
        """After a timeout, the KeyboardInterrupt traceback becomes a timeout message that
        still shows where the code was."""
        for output in reversed(self._outputs):
            if output["type"] == "error" and "KeyboardInterrupt" in output["data"]:
                output["data"] = f"{message}\n{output['data']}"
                return
        self.add_error(message)
