"""Network for a sandbox. `none`: its own empty namespace (bwrap --unshare-net).
`egress`: slirp4netns gives the namespace user-mode NAT to the internet, so `!pip install`
works; the host's loopback is disabled here and everything local to the host or its networks
is refused by the namespace's filter (egress_filter.py), loaded before slirp4netns starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tci.errors import SandboxUnavailable
from tci.sandbox import spawn
from tci.sandbox.egress_filter import FilteredNamespace

_READY_TIMEOUT = 10.0
# slirp4netns ends at once when asked; past this it is killed.
_STOP_SECONDS = 5.0


@dataclass
class Egress:
    process: spawn.Child
    exit_fd: int  # our end of slirp4netns's --exit-fd: closing it (or dying) ends slirp4netns
    namespace: FilteredNamespace  # the sandbox's namespace, its filter kept current

    def cut(self) -> None:
        """The sandbox loses its way out (its filter could not be kept current)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.exit_fd)
        self.cut()
        with contextlib.suppress(ProcessLookupError, ChildProcessError, TimeoutError):
            await asyncio.wait_for(self.process.wait(), timeout=_STOP_SECONDS)
        self.namespace.close()


async def start_egress(namespace: FilteredNamespace, log_path: Path) -> Egress:
    """Connect the filtered namespace to the internet; on failure the namespace is closed."""
    try:
        egress = await _start_slirp(namespace, log_path)
    except BaseException:
        namespace.close()
        raise
    namespace.on_failure.append(egress.cut)
    return egress


async def _start_slirp(namespace: FilteredNamespace, log_path: Path) -> Egress:
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
        process = await spawn.start([
            # --disable-dns: no forwarder at 10.0.2.3 asking whatever resolver the host uses;
            # the sandbox's resolv.conf names TCI_EGRESS_DNS, which its filter lets through.
            binary, "--configure", "--mtu=65520", "--disable-host-loopback", "--disable-dns",
            "--enable-sandbox", "--enable-seccomp", "--ready-fd", str(ready_w),
            "--exit-fd", str(exit_r),
            # The namespace by the descriptor we hold, not by a pid that could be reused.
            "--netns-type=path", namespace.path, "tap0"],
            stderr=log_fd, pass_fds=(ready_w, exit_r, namespace.fd), start_new_session=True,
        )
    except BaseException:
        os.close(exit_w)
        raise
    finally:
        os.close(ready_w)
        os.close(exit_r)
        os.close(log_fd)
    ready = b""
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(os.read, ready_r, 1), _READY_TIMEOUT)
    except TimeoutError:
        pass
    finally:
        os.close(ready_r)
        if ready != b"1":  # failed or cancelled: nothing may be left running
            os.close(exit_w)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    if ready != b"1":
        detail = log_path.read_text(errors="replace").strip() if log_path.exists() else ""
        raise SandboxUnavailable(f"slirp4netns failed to start the sandbox network: {detail}")
    return Egress(process, exit_w, namespace)
