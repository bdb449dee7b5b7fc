"""Starting one sandbox and its worker, connected and ready for a first call.

Every session, pooled or cold, and the start-up self-check's probe start here, through the
host's launcher. A worker that dies or does not answer within the start timeout is torn
down and reported as SandboxUnavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tci.errors import SandboxUnavailable, WorkerDied
from tci.hosts.session_ids import new_session_id
from tci.kernel.driver import WorkerConnection
from tci.kernel.output_limits import OutputLimits
from tci.sandbox.launcher import Sandbox, SandboxLauncher

# A preload request is the worker's own importing; it is never interrupted for long.
_PRELOAD_GRACE_SECONDS = 1.0


@dataclass
class ReadyWorker:
    """A started sandbox and its connected, ready worker; its name becomes the session id."""

    name: str
    sandbox: Sandbox
    worker: WorkerConnection


async def start_worker(
    launcher: SandboxLauncher, limits: OutputLimits, start_timeout: float,
    preload: tuple[str, ...] = (), niceness: int = 0,
    name: str | None = None, place: Callable[[Path], None] | None = None,
) -> ReadyWorker:
    """Start one sandbox + worker; with `preload`, import those modules in it first (and
    run a silent warm-up cell), so that the first call does not pay for them. `name` and
    `place`: a paused session's id and its kept volume (launcher.start), when resumed."""
    name = name or new_session_id()
    sandbox = await launcher.start(name, niceness, place)
    worker = WorkerConnection(sandbox, limits)
    try:
        await worker.wait_ready(start_timeout)
        if preload:
            result = await worker.request({"op": "preload", "modules": list(preload)},
                                          timeout=start_timeout, grace=_PRELOAD_GRACE_SECONDS)
            if result.ended is not None:
                raise WorkerDied(str(result.ended))
    except BaseException as exc:
        worker.close()
        await asyncio.shield(launcher.destroy(sandbox))
        if isinstance(exc, WorkerDied | TimeoutError):
            raise SandboxUnavailable(f"the session's worker did not start: {exc}") from exc
        raise
    return ReadyWorker(name, sandbox, worker)
