"""Starting and stopping the long-lived processes that tests and benchmarks run beside them
(`tci serve`, PostgreSQL, a Jupyter Kernel Gateway): one wait for "it answers" and one stop,
so each caller says only how to tell that its process is up and what to call it.

Also imported by bench/ (which already builds on tests' helpers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

import httpx

POLL_SECONDS = 0.1


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200 now; not listening yet (or any HTTP error) is False."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


def wait_until_up(process: subprocess.Popen, is_up: Callable[[], bool], *, timeout: float,
                  what: str, log: Callable[[], str] = lambda: "",
                  error: type[Exception] = RuntimeError) -> None:
    """Poll `is_up` until it says True. Raises `error` naming `what`, with `log()` (read only
    then: the process's own words on why) when the process exits first or after `timeout`
    seconds, a bound that tells "stuck" from "slow", not a speed claim."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what} exited early:\n{log()}")
        if is_up():
            return
        time.sleep(POLL_SECONDS)
    raise error(f"{what} did not become ready in {timeout:g} s:\n{log()}")


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM,
                 timeout: float = 60) -> None:
    """Send `sig` (the process's own graceful stop) and wait up to `timeout` seconds; then
    SIGKILL its process group (callers start it with start_new_session=True)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
