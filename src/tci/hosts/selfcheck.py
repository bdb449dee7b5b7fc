"""Start-up self-check, orchestrated: a probe session started the way sessions start, its
facts read from inside (sandbox/protections.PROBE) and checked with the host's view of it
(sandbox/protections.problems_in); the server refuses untrusted code if a protection is missing,
unless the operator set TCI_UNSAFE_ALLOW_MISSING_PROTECTIONS."""

from __future__ import annotations

import json

from tci.config import Settings
from tci.hosts.worker_start import start_worker
from tci.kernel.output_limits import OutputLimits
from tci.sandbox.launcher import SandboxLauncher
from tci.sandbox.protections import PROBE, problems_in

# The probe reads a few files and syscalls' answers (milliseconds); the bound only tells a
# stuck probe from a slow one on a machine busy starting up, and failing it stops the start.
_PROBE_TIMEOUT_SECONDS = 60.0
# Our own code, which ignores no interrupt: past its timeout it is killed almost at once.
_PROBE_GRACE_SECONDS = 1.0


async def probe(launcher: SandboxLauncher, settings: Settings) -> list[str]:
    """Start one sandbox + worker through `launcher`, run PROBE in it, tear it down."""
    ready = await start_worker(launcher, OutputLimits.of(settings), settings.worker_start_timeout)
    try:
        result = await ready.worker.request({"op": "execute", "code": PROBE},
                                            timeout=_PROBE_TIMEOUT_SECONDS,
                                            grace=_PROBE_GRACE_SECONDS)
        text = "".join(o["data"] for o in result.outputs if o["type"] == "stdout")
        try:
            facts = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return [f"the probe sandbox did not report its facts: {result.outputs}"]
        return problems_in(facts, ready.sandbox, settings.network)
    finally:
        ready.worker.close()
        await launcher.destroy(ready.sandbox)
