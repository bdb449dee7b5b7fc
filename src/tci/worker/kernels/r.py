"""R: an Rscript-driven read-eval-print loop (r_kernel.R)."""

from __future__ import annotations

import os

from .base import HERE, SubKernel

RSCRIPT = "/usr/bin/Rscript"
# R writes its console output through C's stdio, block-buffered on a pipe: unbuffered, it
# reaches the host as printed, in order with stderr (coreutils' stdbuf, preloaded into R).
STDBUF = "/usr/bin/stdbuf"


class RKernel(SubKernel):
    language = "r"
    runtime = RSCRIPT
    display_name = "R"

    def argv(self) -> list[str]:
        unbuffered = [STDBUF, "-o0", "-e0"] if os.path.exists(STDBUF) else []
        return [*unbuffered, RSCRIPT, "--no-save", "--no-restore", "--no-site-file",
                "--no-init-file", str(HERE / "r_kernel.R")]

    def environment(self) -> dict[str, str]:
        return {"R_LIBS_USER": "/home/user/R/library"}
