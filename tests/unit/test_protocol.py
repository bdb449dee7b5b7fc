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
