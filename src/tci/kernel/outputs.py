"""Worker events -> TCI outputs (pure).

Consecutive chunks of one stream are merged, as a user reading the response expects one
`stdout` entry per stretch of printing, not one per write. Past the output budget, further
output is dropped and one notice says so; the call still completes.
"""

from __future__ import annotations

import json
from typing import Any

STREAMS = ("stdout", "stderr")
RICH = ("display_data", "execute_result")


def _size(data: Any) -> int:
    return len(data) if isinstance(data, str) else len(json.dumps(data))


class OutputCollector:
    def __init__(self, max_bytes: int) -> None:
        self.outputs: list[dict[str, Any]] = []
        self.max_bytes = max_bytes
        self.used = 0
        self.truncated = False

    def _notice(self) -> None:
        if not self.truncated:
            self.truncated = True
            self.outputs.append({
                "type": "stderr",
                "data": f"\n[output truncated: more than {self.max_bytes} bytes "
                "(TCI_MAX_OUTPUT_BYTES); the rest of this call's output was dropped]\n",
            })

    def _admit(self, size: int) -> bool:
        if self.truncated or self.used + size > self.max_bytes:
            self._notice()
            return False
        self.used += size
        return True

    def add_stream(self, name: str, text: str) -> None:
        if not text or self.truncated:
            return
        room = self.max_bytes - self.used
        cut = len(text) > room
        text = text[:room]
        self.used += len(text)
        last = self.outputs[-1] if self.outputs else None
        if text and last is not None and last["type"] == name:
            last["data"] += text
        elif text:
            self.outputs.append({"type": name, "data": text})
        if cut:
            self._notice()

    def add_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind not in (*RICH, "error"):
            return
        data = event.get("data")
        if kind == "error":
            data = str(data)
        elif not isinstance(data, dict):
            return
        if kind == "error" or self._admit(_size(data)):
            # Errors always get through: they say why the code stopped.
            self.outputs.append({"type": kind, "data": data})

    def add_error(self, message: str) -> None:
        self.outputs.append({"type": "error", "data": message})

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
