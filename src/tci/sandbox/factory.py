"""Which starter starts sessions' sandboxes: chosen once, from TCI_SANDBOX_START."""

from __future__ import annotations

from tci.config import Settings
from tci.sandbox.bwrap_starter import BwrapStarter
from tci.sandbox.fork.starter import ForkStarter
from tci.sandbox.launcher import SandboxLauncher


def make_launcher(settings: Settings) -> SandboxLauncher:
    if settings.sandbox_start == "fork":
        starter = ForkStarter(settings)
        # The fork starter keeps its templates and networks running beside the server.
        return SandboxLauncher(settings, starter, services=[starter])
    return SandboxLauncher(settings, BwrapStarter(settings))
