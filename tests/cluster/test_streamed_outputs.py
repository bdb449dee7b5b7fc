"""A streamed call's outputs cross Ray once (tci/cluster/streamed.py): the host actor's reply
names the outputs it already streamed, and the gateway rebuilds exactly the result a single
machine gives. The streamed outputs and the result here come from the kernel's own collector
and line coalescer, as on a host; no Ray is needed."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

from tci.cluster.streamed import OutlinedResult, Streamed
from tci.kernel.coalesce import LineCoalescer
from tci.kernel.ends import CallResult, EndKind
from tci.kernel.outputs import OutputCollector


def streamed_call(write: Any) -> tuple[list[dict], list[dict]]:
    """What a host streams and what its call's result holds, for the writes `write` makes."""
    async def run() -> tuple[list[dict], list[dict]]:
        sent: list[dict] = []
        coalescer = LineCoalescer(sent.append, 10.0)
        collector = OutputCollector(1 << 20, coalescer)
        write(collector)
        coalescer.flush()  # the call's end
        return sent, collector.outputs

    return asyncio.run(run())


def across_ray(result: list[dict], sent: list[dict]) -> tuple[OutlinedResult, list[dict]]:
    """The reply as the gateway receives it (pickled, as Ray sends it) and its rebuilt
    outputs."""
    outlined = pickle.loads(pickle.dumps(OutlinedResult.of(CallResult(result, EndKind.OK),
                                                           pickle.loads(pickle.dumps(sent)))))
    received = pickle.loads(pickle.dumps(sent))
    return outlined, outlined.result(received).outputs


def writes(collector: OutputCollector) -> None:
    for text in ("fir", "st\nsec", "ond\n", "third"):
        collector.add_stream("stdout", text)
    collector.add_stream("stderr", "warning\n")
    collector.add_rich("display_data", {"image/png": "iVBORw0KGgo" * 1000, "text/plain": "x"})
    collector.add_stream("stdout", "after\n")
    collector.add_user_error("Traceback ...\nValueError: bad")


def test_the_result_names_every_streamed_output_instead_of_sending_it_again():
    sent, result = streamed_call(writes)
    assert [o["data"] for o in sent[:3]] == ["first\n", "second\n", "third"]  # lines
    outlined, rebuilt = across_ray(result, sent)
    assert rebuilt == result
    assert all(isinstance(part, Streamed) for part in outlined.outputs)
    # The reply is small: the image and the text are not in it.
    assert len(pickle.dumps(outlined)) < 1000 < len(pickle.dumps(result))


def test_the_rebuilt_outputs_are_dicts_of_their_own():
    """The received ones may still wait in the SSE queue; the manager may change the
    result's (naming the call's own timeout)."""
    sent, result = streamed_call(writes)
    outlined = OutlinedResult.of(CallResult(result, EndKind.OK), sent)
    rebuilt = outlined.result(sent).outputs
    assert not any(r is s for r in rebuilt for s in sent)


def test_an_output_changed_after_it_was_streamed_is_sent_whole():
    """A timeout rewrites the KeyboardInterrupt traceback already streamed: the result's
    version is sent, and the rest still named."""
    def interrupted(collector: OutputCollector) -> None:
        collector.add_stream("stdout", "working\n")
        collector.add_user_error("Traceback ...\nKeyboardInterrupt")
        collector.replace_interrupt_error("TimeoutError: execution timed out")

    sent, result = streamed_call(interrupted)
    outlined, rebuilt = across_ray(result, sent)
    assert rebuilt == result
    assert rebuilt[1]["data"].startswith("TimeoutError: execution timed out\nTraceback")
    assert isinstance(outlined.outputs[0], Streamed)
    assert outlined.outputs[1] == result[1]


def test_outputs_never_streamed_are_sent_whole():
    sent, result = streamed_call(writes)
    last_words = {"type": "error", "data": "WorkerDied: the worker process ended"}
    outlined, rebuilt = across_ray([*result, last_words], sent[:2])
    assert rebuilt == [*result, last_words]
    assert outlined.outputs[0] == result[0]  # its "third" was never streamed
