"""Streamed output in whole lines.

The worker writes what the code writes, as it writes it: `print(1)` is two writes, "1" and
"\\n", so a client rendering or logging each streamed event would see broken lines. Here text
is held until its line ends, then each line goes out as one event. A partial line is held at
most `delay` seconds (a progress bar, a prompt without a newline still show up), or until a
line grows past MAX_HELD bytes. Anything else (the other stream, a rich output, an error, the
call's end) first flushes what is held, so the order the code produced is kept.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tci.kernel.outputs import STREAMS, OutputSink

MAX_HELD = 64 * 1024


class LineCoalescer:
    def __init__(self, sink: OutputSink, delay: float) -> None:
        self.sink = sink
        self.delay = delay
        self._stream: str | None = None
        self._held = ""
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, output: dict[str, Any]) -> None:
        kind = output["type"]
        if kind not in STREAMS:
            self.flush()
            self.sink(output)
            return
        if kind != self._stream:
            self.flush()
            self._stream = kind
        text = self._held + output["data"]
        *lines, self._held = text.split("\n")
        for line in lines:
            self.sink({"type": kind, "data": line + "\n"})
        if len(self._held) > MAX_HELD:
            self.flush()
        elif self._held and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held and self._stream is not None:
            held, self._held = self._held, ""
            self.sink({"type": self._stream, "data": held})
