"""Worker output -> TCI outputs (pure), within the call's output budget.

Consecutive chunks of one stream are merged, as a user reading the response expects one
`stdout` entry per stretch of printing, not one per write. Every output counts against the
budget (TCI_MAX_OUTPUT_BYTES) in UTF-8 bytes of what is sent: text by its bytes, rich data by
its bytes as received, errors too (user code can forge as many as it likes). Past the budget
further output is dropped and one notice says so; the call still completes. So that the
reason a cell stopped is not lost to a flood of earlier output, the first error past the
budget keeps its last ERROR_RESERVE bytes (a traceback ends with the exception).

What is admitted is also handed to `on_output` as it comes (the streamed answer), so the
streamed and the unstreamed answers hold the same outputs under the same cap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STREAMS = ("stdout", "stderr")
RICH = ("display_data", "execute_result")
ERROR_RESERVE = 16 * 1024

OutputSink = Callable[[dict[str, Any]], None]


def _cut_utf8(text: str, room: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `room` bytes."""
    return text.encode("utf-8")[: max(0, room)].decode("utf-8", "ignore")


def _tail_utf8(text: str, room: int) -> str:
    data = text.encode("utf-8")
    return data[max(0, len(data) - room) :].decode("utf-8", "ignore")


class OutputCollector:
    def __init__(self, max_bytes: int, on_output: OutputSink | None = None) -> None:
        self.outputs: list[dict[str, Any]] = []
        self.max_bytes = max_bytes
        self.used = 0
        self.truncated = False
        self.reserve_used = False
        self.on_output = on_output

    def remaining(self) -> int:
        return 0 if self.truncated else max(0, self.max_bytes - self.used)

    def _append(self, output: dict[str, Any]) -> None:
        self.outputs.append(output)
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
        size = len(text.encode("utf-8"))
        cut = size > self.max_bytes - self.used
        if cut:
            text = _cut_utf8(text, self.max_bytes - self.used)
            size = len(text.encode("utf-8"))
        self.used += size
        if text:
            last = self.outputs[-1] if self.outputs else None
            if last is not None and last["type"] == name:
                last["data"] += text
                if self.on_output is not None:
                    self.on_output({"type": name, "data": text})
            else:
                self._append({"type": name, "data": text})
        if cut:
            self.notice_truncated()

    def add_rich(self, kind: str, data: dict[str, Any], size: int) -> None:
        """A MIME bundle of `size` bytes as received from the worker."""
        if self.truncated or size > self.max_bytes - self.used:
            self.notice_truncated()
            return
        self.used += size
        self._append({"type": kind, "data": data})

    def add_user_error(self, text: str) -> None:
        """An error the worker reported (a traceback): counted like any other output."""
        size = len(text.encode("utf-8"))
        if not self.truncated and size <= self.max_bytes - self.used:
            self.used += size
            self._append({"type": "error", "data": text})
            return
        self.notice_truncated()
        if not self.reserve_used:
            self.reserve_used = True
            self._append({"type": "error", "data": _tail_utf8(text, ERROR_RESERVE)})

    def add_error(self, message: str) -> None:
        """The server's own word (a timeout, a death): always kept, and short."""
        self._append({"type": "error", "data": message})

    def has_error(self) -> bool:
        return any(o["type"] == "error" for o in self.outputs)

    def replace_interrupt_error(self, message: str) -> None:
        """After a timeout, the KeyboardInterrupt traceback becomes a timeout message that
        still shows where the code was."""
        for output in reversed(self.outputs):
            if output["type"] == "error" and "KeyboardInterrupt" in output["data"]:
                output["data"] = f"{message}\n{output['data']}"
                return
        self.add_error(message)
