"""Worker events become TCI outputs: streams merged, budget (bytes of the JSON sent) enforced
with a notice, the streamed copy identical to what is kept, and streamed text in whole lines."""

import asyncio

import pytest

from tci.kernel.coalesce import LineCoalescer
from tci.kernel.outputs import ERROR_RESERVE, EVENT_FRAME, OUTPUT_FRAME, OutputCollector, to_json

F = OUTPUT_FRAME  # what one output adds to the answer around its data


def test_consecutive_stream_chunks_merge():
    collector = OutputCollector(1000)
    collector.add_stream("stdout", "a")
    collector.add_stream("stdout", "b")
    collector.add_stream("stderr", "c")
    collector.add_stream("stdout", "d")
    assert collector.outputs == [
        {"type": "stdout", "data": "ab"},
        {"type": "stderr", "data": "c"},
        {"type": "stdout", "data": "d"},
    ]


def test_output_past_the_budget_is_cut_with_one_notice():
    collector = OutputCollector(F + 5)
    collector.add_stream("stdout", "123")
    collector.add_stream("stdout", "4567")
    collector.add_stream("stdout", "89")
    collector.add_rich("display_data", {"text/plain": "x"})
    assert collector.outputs[0] == {"type": "stdout", "data": "12345"}
    assert len(collector.outputs) == 2
    assert "TCI_MAX_OUTPUT_BYTES" in collector.outputs[1]["data"]


def test_the_budget_counts_bytes_not_characters():
    collector = OutputCollector(F + 5)
    collector.add_stream("stdout", "ééé")  # 6 bytes
    assert collector.outputs[0] == {"type": "stdout", "data": "éé"}
    assert collector.truncated


@pytest.mark.parametrize(("text", "sent"), [
    ("\0", "\\u0000"), ('"', '\\"'), ("\\", "\\\\"), ("\x1f", "\\u001f"), ("\n", "\\n"),
    ("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\U0001F600", "\U0001F600"),
])
def test_the_budget_counts_bytes_of_the_json_sent(text, sent):
    """A NUL is one byte written and six sent: the budget counts the six."""
    assert to_json(text) == f'"{sent}"'
    size = len(sent.encode())
    collector = OutputCollector(F + 10 * size)
    collector.add_stream("stdout", text * 25)
    assert collector.outputs[0] == {"type": "stdout", "data": text * 10}
    assert collector.truncated


def test_a_flood_of_escapes_keeps_the_answer_within_the_budget():
    budget = 1 << 20
    collector = OutputCollector(budget)
    for chunk in ("\0" * 65536, '"' * 65536, "\x01\\" * 32768) * 8:
        collector.add_stream("stdout", chunk)
        collector.add_stream("stderr", "x")  # outputs of their own, each with its frame
    answer = to_json({"outputs": collector.outputs})
    notice = collector.outputs[-1]["data"]
    assert "TCI_MAX_OUTPUT_BYTES" in notice
    assert len(answer.encode()) <= budget + len(to_json(notice)) + 2 * F


def test_empty_outputs_are_not_free():
    """Empty rich outputs and errors still cost the answer their frames."""
    collector = OutputCollector(100 * F)
    for _ in range(1000):
        collector.add_rich("display_data", {"": ""})
        collector.add_user_error("")
    assert len(collector.outputs) < 100
    assert collector.truncated


def test_a_number_json_cannot_hold_is_dropped_with_a_notice():
    collector = OutputCollector(1000)
    collector.add_rich("display_data", {"application/json": float("nan")})
    collector.add_rich("display_data", {"text/plain": "next"})
    assert collector.outputs == [
        {"type": "stderr", "data": "\n[output dropped: display_data with a number JSON cannot "
                                   "hold (NaN or infinity)]\n"},
        {"type": "display_data", "data": {"text/plain": "next"}},
    ]


def test_many_tiny_writes_cost_linear_time():
    """One output from 200,000 small writes, without copying it once per write."""
    import time

    collector = OutputCollector(16 << 20)
    started = time.process_time()
    for _ in range(200_000):
        collector.add_stream("stdout", "0123456789")
    assert collector.outputs == [{"type": "stdout", "data": "0123456789" * 200_000}]
    # Linear: under a second here. Copying the string at every write took 54 s for half as
    # many writes.
    assert time.process_time() - started < 20


def test_errors_count_too_but_the_first_past_the_budget_keeps_its_tail():
    collector = OutputCollector(F + 1)
    collector.add_stream("stdout", "toolong")
    collector.add_user_error("Traceback\n" + "x" * (2 * ERROR_RESERVE) + "\nValueError: x")
    collector.add_user_error("ValueError: forged")
    errors = [o["data"] for o in collector.outputs if o["type"] == "error"]
    assert len(errors) == 1
    # The tail is counted as it is sent: the newline before the exception is two bytes.
    assert errors[0].endswith("ValueError: x") and len(errors[0]) == ERROR_RESERVE - 1


def test_the_kept_tail_of_an_error_is_counted_as_sent():
    collector = OutputCollector(0)
    collector.add_user_error("\0" * ERROR_RESERVE + "ValueError: x")
    tail = next(o["data"] for o in collector.outputs if o["type"] == "error")
    assert tail.endswith("ValueError: x")
    assert len(to_json(tail).encode()) - 2 <= ERROR_RESERVE


def test_the_streamed_copy_is_exactly_what_is_kept():
    streamed = []
    collector = OutputCollector(F + 6, streamed.append)
    collector.add_stream("stdout", "abc")
    collector.add_stream("stdout", "defgh")
    collector.add_rich("display_data", {"text/plain": "x"})
    assert "".join(o["data"] for o in streamed if o["type"] == "stdout") == "abcdef"
    assert [o["type"] for o in streamed] == ["stdout", "stdout", "stderr"]


def test_streamed_lines_are_counted_with_their_events():
    """Streamed, each line is an event of its own: a flood of empty lines costs its events."""
    async def scenario() -> tuple[list[dict], OutputCollector]:
        sent: list[dict] = []
        collector = OutputCollector(F + 100 * (EVENT_FRAME + 2))
        collector.on_output = LineCoalescer(sent.append, 0.05, collector.spend)
        for _ in range(1000):
            collector.add_stream("stdout", "\n")
        return sent, collector

    sent, collector = asyncio.run(scenario())
    lines = [o for o in sent if o["type"] == "stdout"]
    assert len(lines) == 100 and collector.truncated
    events = sum(len(f"event: output\ndata: {to_json(o)}\n\n") for o in sent[:-1])
    assert events <= collector.max_bytes


def test_a_partial_line_costs_its_event_when_it_is_sent():
    async def scenario() -> OutputCollector:
        collector = OutputCollector(1000)
        collector.on_output = LineCoalescer(lambda output: None, 0.01, collector.spend)
        collector.add_stream("stdout", "ab")
        before = collector.used
        await asyncio.sleep(0.1)  # the partial line goes out after the delay
        assert collector.used == before + EVENT_FRAME
        return collector

    asyncio.run(scenario())


def test_streamed_text_goes_out_in_whole_lines_in_order():
    async def scenario() -> list[dict]:
        sent: list[dict] = []
        lines = LineCoalescer(sent.append, delay=0.05)
        for piece in ("1", "\n", "a\nb\nc", "\n"):
            lines({"type": "stdout", "data": piece})
        lines({"type": "stderr", "data": "warn"})  # flushed by what follows, not a timer
        lines({"type": "stdout", "data": "partial"})
        await asyncio.sleep(0.2)  # a partial line goes out after the delay
        return sent

    assert asyncio.run(scenario()) == [
        {"type": "stdout", "data": "1\n"}, {"type": "stdout", "data": "a\n"},
        {"type": "stdout", "data": "b\n"}, {"type": "stdout", "data": "c\n"},
        {"type": "stderr", "data": "warn"}, {"type": "stdout", "data": "partial"},
    ]


def test_timeout_message_keeps_the_interrupt_traceback():
    collector = OutputCollector(100)
    collector.add_user_error("Traceback ...\nKeyboardInterrupt")
    collector.replace_interrupt_error("TimeoutError: timed out")
    assert collector.outputs == [
        {"type": "error", "data": "TimeoutError: timed out\nTraceback ...\nKeyboardInterrupt"}
    ]
