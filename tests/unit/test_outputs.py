"""Worker events become TCI outputs: streams merged, budget (UTF-8 bytes) enforced with a
notice, the streamed copy identical to what is kept, and streamed text in whole lines."""

import asyncio

from tci.kernel.coalesce import LineCoalescer
from tci.kernel.outputs import ERROR_RESERVE, OutputCollector


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
    collector = OutputCollector(5)
    collector.add_stream("stdout", "123")
    collector.add_stream("stdout", "4567")
    collector.add_stream("stdout", "89")
    collector.add_rich("display_data", {"text/plain": "x"}, 1)
    assert collector.outputs[0] == {"type": "stdout", "data": "12345"}
    assert len(collector.outputs) == 2
    assert "TCI_MAX_OUTPUT_BYTES" in collector.outputs[1]["data"]


def test_the_budget_counts_bytes_not_characters():
    collector = OutputCollector(5)
    collector.add_stream("stdout", "ééé")  # 6 bytes
    assert collector.outputs[0] == {"type": "stdout", "data": "éé"}
    assert collector.truncated


def test_errors_count_too_but_the_first_past_the_budget_keeps_its_tail():
    collector = OutputCollector(1)
    collector.add_stream("stdout", "toolong")
    collector.add_user_error("Traceback\n" + "x" * (2 * ERROR_RESERVE) + "\nValueError: x")
    collector.add_user_error("ValueError: forged")
    errors = [o["data"] for o in collector.outputs if o["type"] == "error"]
    assert len(errors) == 1
    assert errors[0].endswith("ValueError: x") and len(errors[0]) == ERROR_RESERVE


def test_the_streamed_copy_is_exactly_what_is_kept():
    streamed = []
    collector = OutputCollector(6, streamed.append)
    collector.add_stream("stdout", "abc")
    collector.add_stream("stdout", "defgh")
    collector.add_rich("display_data", {"text/plain": "x"}, 1)
    assert "".join(o["data"] for o in streamed if o["type"] == "stdout") == "abcdef"
    assert [o["type"] for o in streamed] == ["stdout", "stdout", "stderr"]


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
