"""Frames survive a pipe round trip, including partial reads and non-ASCII text."""

import os

import pytest

from tci.worker.protocol import HEADER, ProtocolError, decode_body, read_frame, write_frame


def test_round_trip_through_a_pipe():
    read_fd, write_fd = os.pipe()
    try:
        write_frame(write_fd, {"op": "execute", "code": "print('é')", "id": 3})
        assert read_frame(read_fd) == {"op": "execute", "code": "print('é')", "id": 3}
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_closed_channel_is_eof():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, HEADER.pack(10) + b"{}")
    os.close(write_fd)
    with pytest.raises(EOFError):
        read_frame(read_fd)
    os.close(read_fd)


def test_garbage_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        decode_body(b"not json")
    with pytest.raises(ProtocolError):
        decode_body(b"[1, 2]")


def test_event_frames_carry_text_as_blobs_and_json_values_within_a_budget():
    from tci.kernel.frames import FrameReader, JsonBudget, bundle_of, text_of
    from tci.worker.protocol import encode_event

    reader = FrameReader(lambda: 1 << 20)
    data = encode_event({"type": "error", "id": 1, "data": "bad \udcff"})
    data += encode_event({"type": "display_data", "id": 1,
                          "data": {"text/plain": "é", "application/json": {"a": [1, 2]}}})
    frames = reader.feed(data[:7]) + reader.feed(data[7:])  # split reads reassemble
    assert text_of(frames[0]) == "bad \\udcff"
    assert bundle_of(frames[1], JsonBudget(100)) == {"text/plain": "é",
                                                     "application/json": {"a": [1, 2]}}
    assert bundle_of(frames[1], JsonBudget(3)) is None  # over budget: nothing is parsed


def test_an_oversized_event_frame_is_skipped_as_it_arrives():
    from tci.kernel.frames import FrameReader, Skipped
    from tci.worker.protocol import encode_event

    reader = FrameReader(lambda: 10)
    big = encode_event({"type": "error", "id": 1, "data": "x" * 100_000})
    small = encode_event({"type": "done", "id": 1, "ok": True})
    out = reader.feed(big[:50_000])
    assert out == [Skipped(len(big) - 4)] and len(reader._buffer) == 0
    out = reader.feed(big[50_000:] + small)
    assert [f.head["type"] for f in out] == ["done"]


def test_malformed_event_frames_are_protocol_errors():
    from tci.kernel.frames import FrameReader

    for body in (HEADER.pack(8) + b"not json", HEADER.pack(2) + b"[]",
                 HEADER.pack(11) + b'{"blobs":[5]}'):
        with pytest.raises(ProtocolError):
            FrameReader(lambda: 100).feed(HEADER.pack(len(body)) + body)
