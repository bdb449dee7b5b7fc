"""A streamed call's outputs cross Ray once.

A host actor yields each output to the gateway as it is produced (stdout and stderr a line
at a time, kernel/coalesce.py); the call's result then holds the same outputs again, the
streams joined per run of writes. Instead of sending them twice, the host sends the result
as an outline: each output that the gateway already received is named by the run of streamed
outputs it is made of (`Streamed`), checked on the host to give back exactly that output;
anything else (an output never streamed, one the check does not confirm) goes whole. The
gateway rebuilds the result from what it received: the client's `result` event is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tci.kernel.ends import CallResult, EndKind, EndReason
from tci.kernel.outputs import STREAMS

Output = dict[str, Any]


@dataclass(frozen=True)
class Streamed:
    """The result's output made of the streamed outputs [start, stop), in order: a stream's
    text joined, or one rich output or error as it was streamed."""

    start: int
    stop: int
    joined: bool  # a stream's text, joined; else the one output [start] as it was


@dataclass(frozen=True)
class OutlinedResult:
    """A streamed call's CallResult as it crosses Ray: the outputs as an outline."""

    outputs: list[Output | Streamed]
    end: EndKind
    ended: EndReason | None

    @classmethod
    def of(cls, result: CallResult, sent: list[Output]) -> OutlinedResult:
        return cls(outline(result.outputs, sent), result.end, result.ended)

    def result(self, received: list[Output]) -> CallResult:
        """The CallResult again, from the outputs the gateway received."""
        return CallResult(rebuild(self.outputs, received), self.end, self.ended)


def outline(outputs: list[Output], sent: list[Output]) -> list[Output | Streamed]:
    """`outputs` (the call's result) with each part that `sent` (the streamed outputs, in
    order) already carries replaced by where it is in `sent`."""
    outlined: list[Output | Streamed] = []
    at = 0
    for output in outputs:
        part = _covered(output, sent, at)
        outlined.append(output if part is None else part)
        at = at if part is None else part.stop
    return outlined


def _covered(output: Output, sent: list[Output], at: int) -> Streamed | None:
    """The streamed run from `at` that makes up exactly `output`, if there is one."""
    if at >= len(sent):
        return None
    if output.get("type") not in STREAMS or output.keys() != {"type", "data"}:
        return Streamed(at, at + 1, joined=False) if sent[at] == output else None
    return _text_run(output["type"], output["data"], sent, at)


def _text_run(kind: str, data: Any, sent: list[Output], at: int) -> Streamed | None:
    if not isinstance(data, str) or not data:
        return None
    stop, size = at, 0
    while stop < len(sent) and size < len(data):
        piece = sent[stop]
        text = piece.get("data")
        if piece.get("type") != kind or piece.keys() != {"type", "data"} \
                or not isinstance(text, str) or not text or not data.startswith(text, size):
            break
        size += len(text)
        stop += 1
    return Streamed(at, stop, joined=True) if size == len(data) else None


def rebuild(outlined: list[Output | Streamed], received: list[Output]) -> list[Output]:
    """The result's outputs from the outline and the outputs the gateway received, each a
    dict of its own (the received ones may still be queued for the client's events)."""
    outputs: list[Output] = []
    for part in outlined:
        if not isinstance(part, Streamed):
            outputs.append(part)
        elif part.joined:
            run = received[part.start:part.stop]
            outputs.append({"type": run[0]["type"], "data": "".join(p["data"] for p in run)})
        else:
            outputs.append(dict(received[part.start]))
    return outputs
