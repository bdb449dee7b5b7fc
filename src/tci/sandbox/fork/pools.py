"""Egress networks made ahead of demand (fork path, TCI_NETWORK=egress).

A session's egress network is a network namespace with the egress filter loaded and a
slirp4netns serving it: two programs to run (nft, slirp4netns), tens of milliseconds, most of
a forked session's start. Made here in the background instead, a few at a time, each fresh
(never given to two sessions), and handed to a fork, which joins it (setns) instead of making
an empty one. A session whose network is torn down takes it along, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path

from tci.errors import SandboxUnavailable
from tci.sandbox.egress_filter import EgressFilter
from tci.sandbox.network import Egress, start_egress
from tci.worker import linux

log = logging.getLogger(__name__)


def new_network_namespace() -> int:
    """A new, empty network namespace, held by the returned fd. Made by a short-lived thread
    of its own (a namespace is per thread until a process is made in it), which goes back to
    the server's namespace or, failing that, ends without running anything else."""
    made: list[int] = []
    failed: list[BaseException] = []

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.unshare(linux.CLONE_NEWNET)
            made.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            linux.setns(own, linux.CLONE_NEWNET)
        except BaseException as exc:
            failed.append(exc)
        finally:
            os.close(own)

    thread = threading.Thread(target=make, name="tci-netns")
    thread.start()
    thread.join()
    if failed:
        for fd in made:
            os.close(fd)
        raise SandboxUnavailable(f"could not make a network namespace: {failed[0]}")
    return made[0]


class NetworkPool:
    def __init__(self, egress_filter: EgressFilter, size: int, log_dir: Path,
                 retry_seconds: float) -> None:
        self.egress_filter = egress_filter
        self.size = size
        self.log_dir = log_dir
        log_dir.mkdir(mode=0o700, exist_ok=True)
        self.retry_seconds = retry_seconds
        self.ready: list[Egress] = []
        self._made = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.size > 0:
            self._task = asyncio.create_task(self._refill_forever(), name="tci-netns-pool")
            self._wake.set()

    async def take(self) -> Egress:
        """A ready network, or one made now if none is."""
        self._wake.set()
        while self.ready:
            egress = self.ready.pop(0)
            if egress.process.returncode is None:
                return egress
            await egress.stop()  # its slirp4netns died while it waited: not handed out
        return await self.make()

    async def make(self) -> Egress:
        self._made += 1
        fd = await asyncio.to_thread(new_network_namespace)
        namespace = await self.egress_filter.attach_fd(fd)
        return await start_egress(namespace, self.log_dir / f"{self._made}.log")

    async def _refill_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self.ready) < self.size:
                try:
                    self.ready.append(await self.make())
                except SandboxUnavailable as exc:
                    log.warning("could not make an egress network ahead: %s", exc.message)
                    await asyncio.sleep(self.retry_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ready, self.ready = self.ready, []
        for egress in ready:
            await egress.stop()
