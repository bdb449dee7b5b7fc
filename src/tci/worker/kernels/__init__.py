"""Sub-kernels: a session's runtimes for languages other than Python (see base.py).

`Kernels` keeps one per kind for the session's life, started on first use."""

from __future__ import annotations

import os

from .base import Emit, KernelUnavailable, RuntimeLimits, SubKernel, Writer
from .bash import BashKernel
from .node import NodeKernel
from .r import RKernel

# Session language -> the kind of kernel that runs it (one Node serves JS and TypeScript).
KINDS: dict[str, type[SubKernel]] = {
    "javascript": NodeKernel, "typescript": NodeKernel, "bash": BashKernel, "r": RKernel,
}


def installed() -> dict[str, bool]:
    """Which session languages this machine's sandboxes can run: Python always, the others
    where their runtime is installed (sandboxes see the host's /usr read-only)."""
    return {"python": True, **{name: os.path.exists(kind.runtime) for name, kind in KINDS.items()}}


class Kernels:
    def __init__(self, emit: Emit, stdout: Writer, stderr: Writer) -> None:
        self.emit, self.stdout, self.stderr = emit, stdout, stderr
        self.running: dict[type[SubKernel], SubKernel] = {}

    def execute(self, language: str, code: str, limits: RuntimeLimits | None = None) -> bool:
        kind = KINDS.get(language)
        if kind is None:
            self.emit({"type": "error", "data": f"this session does not run {language!r}; it "
                       f"runs python, {', '.join(KINDS)}", "ename": "UnknownLanguage"})
            return False
        kernel = self.running.get(kind)
        if kernel is None:
            kernel = self.running[kind] = kind(self.emit, self.stdout, self.stderr)
        kernel.language = language
        kernel.limits = limits or RuntimeLimits()
        try:
            return kernel.execute(code)
        except KernelUnavailable as exc:
            kernel.stop()
            self.emit({"type": "error", "data": str(exc), "ename": "RuntimeUnavailable"})
            return False
        except OSError as exc:  # no pipe or process to be had (a limit): the session lives on
            kernel.stop()
            self.emit({"type": "error", "data": f"could not run {kernel.display_name}: {exc}",
                       "ename": "RuntimeUnavailable"})
            return False
        except KeyboardInterrupt:  # while it started: a half-started runtime is no use
            kernel.stop()
            self.emit({"type": "error", "data": f"KeyboardInterrupt: interrupted while "
                       f"{kernel.display_name} was starting", "ename": "KeyboardInterrupt"})
            return False
