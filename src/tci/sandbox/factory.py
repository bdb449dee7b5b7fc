"""Which launcher starts sessions' sandboxes: chosen once, from the settings."""

from __future__ import annotations

from tci.config import Settings
from tci.sandbox.fork_launcher import ForkLauncher
from tci.sandbox.launcher import SandboxLauncher


def make_launcher(settings: Settings) -> SandboxLauncher:
    if settings.sandbox_start == "fork":
        return ForkLauncher(settings)
    return SandboxLauncher(settings)
