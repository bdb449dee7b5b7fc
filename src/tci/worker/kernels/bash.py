"""bash: one long-lived bash per session (bash_kernel.sh); each call runs in that shell."""

from __future__ import annotations

import os
import signal
from typing import Any

from .base import HERE, SubKernel

BASH = "/bin/bash"


class BashKernel(SubKernel):
    language = "bash"
    runtime = BASH
    display_name = "bash"

    def argv(self) -> list[str]:
        return [BASH, "--noprofile", "--norc", str(HERE / "bash_kernel.sh")]

    def interrupt(self) -> None:
        # As Ctrl-C at a terminal: the whole foreground group, so `sleep` or a program the
        # code started stops, and bash's trap ends the call.
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGINT)

    def finish(self, done: dict[str, Any]) -> bool:
        """The call's last command's status: N != 0 is an error output after its output."""
        status = done.get("status", 0)
        if isinstance(status, int) and status != 0:
            self.emit({"type": "error", "data": f"exit status {status}", "ename": "ExitStatus"})
            return False
        return True
