"""Network for a sandbox. `none`: its own empty namespace (bwrap --unshare-net).
`egress`: slirp4netns gives the namespace user-mode NAT to the outside, with the host's
loopback disabled, so `!pip install` works while host services stay out of reach."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tci.errors import SandboxUnavailable

_READY_TIMEOUT = 10.0


@dataclass
class Egress:
    process: asyncio.subprocess.Process
    exit_fd: int  # our end of slirp4netns's --exit-fd: closing it (or dying) ends slirp4netns

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.exit_fd)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            await asyncio.wait_for(self.process.wait(), timeout=5)


async def start_egress(child_pid: int, log_path: Path) -> Egress:
    binary = shutil.which("slirp4netns")
    if binary is None:
        raise SandboxUnavailable(
            "TCI_NETWORK=egress needs slirp4netns (apt-get install slirp4netns)"
        )
    ready_r, ready_w = os.pipe()
    # slirp4netns runs as root in its own session; if the server dies, its end of this pipe
    # closes with it and slirp4netns exits instead of lingering forever.
    exit_r, exit_w = os.pipe()
    # A file, not a pipe: a pipe nobody drains could fill and stall the session's network.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "--configure", "--mtu=65520", "--disable-host-loopback",
            "--enable-sandbox", "--enable-seccomp", "--ready-fd", str(ready_w),
            "--exit-fd", str(exit_r),
            str(child_pid), "tap0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=log_fd, pass_fds=(ready_w, exit_r), start_new_session=True,
        )
    except BaseException:
        os.close(exit_w)
        raise
    finally:
        os.close(ready_w)
        os.close(exit_r)
        os.close(log_fd)
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(os.read, ready_r, 1), _READY_TIMEOUT)
    except TimeoutError:
        ready = b""
    finally:
        os.close(ready_r)
    if ready != b"1":
        os.close(exit_w)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        detail = log_path.read_text(errors="replace").strip() if log_path.exists() else ""
        raise SandboxUnavailable(f"slirp4netns failed to start the sandbox network: {detail}")
    return Egress(process, exit_w)
