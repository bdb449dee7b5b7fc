"""Worker events become TCI outputs: streams merged, budget enforced with a notice."""

from tci.kernel.outputs import OutputCollector


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
    collector.add_event({"type": "display_data", "data": {"text/plain": "x"}})
    assert collector.outputs[0] == {"type": "stdout", "data": "12345"}
    assert len(collector.outputs) == 2
    assert "TCI_MAX_OUTPUT_BYTES" in collector.outputs[1]["data"]


def test_errors_pass_even_past_the_budget():
    collector = OutputCollector(1)
    collector.add_stream("stdout", "toolong")
    collector.add_event({"type": "error", "data": "ValueError: x"})
    assert collector.outputs[-1] == {"type": "error", "data": "ValueError: x"}


def test_timeout_message_keeps_the_interrupt_traceback():
    collector = OutputCollector(100)
    collector.add_event({"type": "error", "data": "Traceback ...\nKeyboardInterrupt"})
    collector.replace_interrupt_error("TimeoutError: timed out")
    assert collector.outputs == [
        {"type": "error", "data": "TimeoutError: timed out\nTraceback ...\nKeyboardInterrupt"}
    ]
