"""Interrupting at the worst moments: an interrupt asked the instant a cell's request is
written, before the worker has read it or started the cell, must stop that cell (before the
"started" handshake it was lost, or killed the session); a SIGINT that comes after a cell
ended must not touch the next one. Driven at the WorkerConnection, the only level where the
timing can be forced (an HTTP client is always later than the worker)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tci.config import Settings
from tci.hosts.worker_start import start_worker
from tci.kernel.output_limits import OutputLimits
from tci.sandbox.factory import make_launcher

IN_THE_SLEEP = re.compile(r"Traceback \(most recent call last\):\n  Cell In\[\d+\], line 3\n"
                          r"    time\.sleep\(60\)\nKeyboardInterrupt")
LONG_CELL = {"op": "execute", "code": "import time\nstarted = True\ntime.sleep(60)"}


def errors_of(result) -> list[str]:
    return [o["data"] for o in result.outputs if o["type"] == "error"]


def stdout_of(result) -> str:
    return "".join(o["data"] for o in result.outputs if o["type"] == "stdout")


async def scenario(settings: Settings) -> None:
    launcher = make_launcher(settings)
    launcher.prepare()
    ready = await start_worker(launcher, OutputLimits.of(settings), 60)
    worker = ready.worker
    try:
        for attempt in range(10):
            request = asyncio.create_task(worker.request(LONG_CELL, timeout=60, grace=2))
            await asyncio.sleep(0)  # the task ran up to its first await: the frame is written
            assert worker.interrupt(), attempt
            result = await asyncio.wait_for(request, 20)
            # Stopped before or as it began: a plain KeyboardInterrupt, no machinery frames.
            [error] = errors_of(result)
            assert error == "KeyboardInterrupt" or IN_THE_SLEEP.fullmatch(error), (
                attempt, result.outputs)
            assert result.ended is None

        # A SIGINT after a cell ended (as from a Stop that lost the race with the cell's end)
        # is dropped: the next cell runs to its end.
        await worker.request({"op": "execute", "code": "x = 41"}, timeout=60, grace=2)
        assert ready.sandbox.interrupt()
        await asyncio.sleep(0.2)
        result = await worker.request({"op": "execute", "code": "import time\ntime.sleep(0.3)\n"
                                       "print(x + 1)"}, timeout=60, grace=2)
        assert errors_of(result) == []
        assert stdout_of(result) == "42\n"
    finally:
        worker.close()
        await launcher.destroy(ready.sandbox)
        launcher.cleanup()


def test_interrupt_right_after_the_request_is_written_stops_that_cell(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", network="none")
    asyncio.run(scenario(settings))
