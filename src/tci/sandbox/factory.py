"""Which launcher starts sessions' sandboxes: chosen once, from the settings."""

from __future__ import annotations

from tci.config import Settings
from tci.sandbox.launcher import SandboxLauncher


def make_launcher(settings: Settings) -> SandboxLauncher:
    return SandboxLauncher(settings)
