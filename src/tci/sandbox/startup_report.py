"""A sandbox's start-up report, read as hostile input: bubblewrap's --info-fd on one path, the
forked init's JSON lines on the other. At most a fixed number of bytes: more is a
broken protocol (SandboxUnavailable), never a server that grows."""

from __future__ import annotations

import asyncio
import logging
import os

from tci.errors import SandboxUnavailable

log = logging.getLogger(__name__)

# A few JSON lines of ids and timings, well under 1 KiB. A fixed protocol maximum, not a
# setting: no session's output goes this way.
MAX_REPORT_BYTES = 1 << 16


async def read_report(fd: int, max_bytes: int = MAX_REPORT_BYTES) -> bytes:
    """The report channel `fd` to its end: at most `max_bytes` (SandboxUnavailable beyond)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    said = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            chunk = os.read(fd, max_bytes + 1 - len(said))
        except BlockingIOError:
            return
        except OSError as exc:
            chunk = b""
            log.debug("report fd read failed: %s", exc)
        said.extend(chunk)
        if len(said) > max_bytes and not done.done():
            done.set_exception(SandboxUnavailable(
                f"the sandbox broke the protocol: more than {max_bytes} bytes on its info "
                "channel"))
        elif not chunk and not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return bytes(said)
