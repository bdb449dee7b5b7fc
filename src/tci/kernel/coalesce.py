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
from collections.abc import Callable
from typing import Any

from tci.kernel.outputs import EVENT_FRAME, STREAMS, OutputSink

MAX_HELD = 64 * 1024


class LineCoalescer:
    """`spend` is told the bytes of each partial line's event (the output budget counts a
    whole line's event as its newline is admitted, a partial one only when it is sent)."""

    def __init__(self, sink: OutputSink, delay: float,
                 spend: Callable[[int], None] | None = None) -> None:
        self.sink = sink
        self.delay = delay
        self.spend = spend
        self._stream: str | None = None
        # The partial line as pieces, joined once it is sent: a long line written a byte at a
        # time is not copied again for every byte.
        self._held: list[str] = []
        self._held_size = 0
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
        data = output["data"]
        complete, newline, partial = data.rpartition("\n")
        if newline:
            lines = "".join(self._held) + complete
            self._held, self._held_size = [], 0
            for line in lines.split("\n"):
                self.sink({"type": kind, "data": line + "\n"})
        if partial:
            self._held.append(partial)
            self._held_size += len(partial)
        if self._held_size > MAX_HELD:
            self.flush()
        elif self._held and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held and self._stream is not None:
            held = "".join(self._held)
            self._held, self._held_size = [], 0
            if self.spend is not None:
                self.spend(EVENT_FRAME)
            self.sink({"type": self._stream, "data": held})
